"""The release side: which variants a run promotes (policy) and where they go."""
