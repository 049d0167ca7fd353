"""JUnit XML: one test case per variant x gate, so CI systems show gate results natively."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any


def _case_name(gate: dict[str, Any]) -> str:
    return f"{gate['metric']}[{gate['output']}]" if gate.get("output") else gate["metric"]


def render_junit(documents: list[dict[str, Any]]) -> str:
    """One <testsuites> holding a <testsuite> per recipe run."""
    root = ET.Element("testsuites")
    for results in documents:
        root.append(_suite(results))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suite(results: dict[str, Any]) -> ET.Element:
    recipe = results["recipe"]["name"]
    suite = ET.Element("testsuite", name=f"quant.{recipe}")
    tests = failures = errors = 0
    for variant_name, variant in results["variants"].items():
        classname = f"quant.{recipe}.{variant_name}"
        if variant["status"] == "error":
            tests += 1
            errors += 1
            case = ET.SubElement(suite, "testcase", classname=classname, name="build")
            ET.SubElement(case, "error", message=str(variant.get("error") or "build failed"))
            continue
        if variant["status"] == "nothing_quantized":  # an FP32 copy is a failed variant, not a passing one
            tests += 1
            failures += 1
            case = ET.SubElement(suite, "testcase", classname=classname, name="quantized")
            ET.SubElement(case, "failure", message=str(variant.get("note")), type="NothingQuantized")
            continue
        for gate in variant.get("gates", []):
            tests += 1
            case = ET.SubElement(suite, "testcase", classname=classname, name=_case_name(gate))
            bounds = ", ".join(f"{k} {gate[k]}" for k in ("min", "max", "max_regression") if gate.get(k) is not None)
            interval = gate.get("interval")
            measured = f"observed {gate.get('observed')}" + (f" [{interval['low']}, {interval['high']}] n={interval['samples']}" if interval else "")
            ET.SubElement(case, "system-out").text = f"{measured} ({bounds}{', whole interval' if gate.get('must_clear') == 'interval' else ''})"
            if gate.get("verdict") == "inconclusive":  # not a pass: CI must not go green on a coin flip
                failures += 1
                ET.SubElement(case, "failure", message=f"{_case_name(gate)} inconclusive: {gate.get('reason', '')}", type="GateInconclusive")
            elif not gate["passed"]:
                failures += 1
                message = f"{_case_name(gate)} = {gate.get('observed')} violates {bounds}" + (f": {gate['reason']}" if gate.get("reason") else "")
                ET.SubElement(case, "failure", message=message, type="GateFailed")
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    return suite
