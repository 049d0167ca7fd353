#!/usr/bin/env python3
"""Generate seeded synthetic OCR images for calibrating and evaluating PP-OCRv4.

Writes two data sets under --out (default ``calibration_data``):

* ``ocr_lines/{calib,tune,eval}/``: single text-line crops (input of the rec model)
  with ``labels.tsv`` (``filename<TAB>text``, no header).
* ``ocr_pages/{calib,tune,eval}/``: document-like pages (input of the det model)
  with ``labels.tsv`` in PaddleOCR det format
  (``filename<TAB>[{"transcription": ..., "points": [[x, y] * 4]}, ...]``).

``calib`` is made here (easy, varied lines and pages). ``tune`` and ``eval`` are the realistic,
degraded sets made by ocr_real_lines.py and ocr_real_pages.py, with ``slices.tsv``
(``filename<TAB>slice``); tools/ocr_det_crops.py then adds lines cut by the FP32 det model.

All text comes from word lists and templates written in this file, so its
licence is the project's own. Output is deterministic for a given ``--seed``,
font files and Pillow/FreeType/libjpeg versions. Only Pillow and numpy are
used; fonts are read from fixed Debian paths (see ``FONT_PACKAGES``).

Usage: python tools/make_ocr_data.py --seed 0 --out calibration_data
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

T = TypeVar("T")
Rng = np.random.Generator
Box = list[list[int]]
Ink = tuple[int, int, int]

# ---------------------------------------------------------------------------
# Fonts
# ---------------------------------------------------------------------------

FONT_PACKAGES = "fonts-dejavu-core fonts-wqy-microhei fonts-wqy-zenhei"
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
WQY = Path("/usr/share/fonts/truetype/wqy")


@dataclass(frozen=True)
class FontSpec:
    path: Path
    index: int  # face index inside a .ttc collection


LATIN_FONTS: tuple[FontSpec, ...] = (
    FontSpec(DEJAVU / "DejaVuSans.ttf", 0),
    FontSpec(DEJAVU / "DejaVuSans-Bold.ttf", 0),
    FontSpec(DEJAVU / "DejaVuSerif.ttf", 0),
    FontSpec(DEJAVU / "DejaVuSansMono.ttf", 0),
)
CJK_FONTS: tuple[FontSpec, ...] = (
    FontSpec(WQY / "wqy-microhei.ttc", 0),
    FontSpec(WQY / "wqy-zenhei.ttc", 0),
)


def check_fonts() -> None:
    """Fail early and clearly: a silent fallback font would break determinism."""
    missing = [str(f.path) for f in LATIN_FONTS + CJK_FONTS if not f.path.is_file()]
    if missing:
        sys.exit(
            "make_ocr_data: missing font files:\n  "
            + "\n  ".join(missing)
            + f"\nInstall them with: apt-get install -y {FONT_PACKAGES}"
        )


_FONT_CACHE: dict[tuple[FontSpec, int], ImageFont.FreeTypeFont] = {}


def load_font(spec: FontSpec, size: int) -> ImageFont.FreeTypeFont:
    key = (spec, size)
    if key not in _FONT_CACHE:
        # BASIC layout is always built into Pillow (raqm is optional), so output does not
        # depend on whether libraqm happens to be installed.
        _FONT_CACHE[key] = ImageFont.truetype(
            str(spec.path), size, index=spec.index, layout_engine=ImageFont.Layout.BASIC
        )
    return _FONT_CACHE[key]


_GLYPH_CACHE: dict[tuple[FontSpec, str], bool] = {}


def glyph_bitmap(font: ImageFont.FreeTypeFont, ch: str) -> bytes:
    im = Image.new("L", (48, 48), 0)
    ImageDraw.Draw(im).text((4, 4), ch, fill=255, font=font)
    return im.tobytes()


def has_glyph(spec: FontSpec, ch: str) -> bool:
    """A glyph is missing if it renders exactly like an unassigned code point (tofu)."""
    key = (spec, ch)
    if key not in _GLYPH_CACHE:
        font = load_font(spec, 24)
        tofu = glyph_bitmap(font, "\U0010fffd")
        _GLYPH_CACHE[key] = ch == " " or glyph_bitmap(font, ch) != tofu
    return _GLYPH_CACHE[key]


def is_cjk(text: str) -> bool:
    return any(ord(c) > 0x2000 for c in text)


def pick_font(rng: Rng, text: str) -> FontSpec:
    # Latin text mostly uses DejaVu; WenQuanYi sometimes, as Chinese documents do.
    if is_cjk(text) or rng.random() < 0.2:
        return pick(rng, CJK_FONTS)
    return pick(rng, LATIN_FONTS)


# ---------------------------------------------------------------------------
# Text content (all written here; every character is in the PP-OCRv4 dictionary)
# ---------------------------------------------------------------------------

EN_NOUNS = (
    "report meeting order invoice customer account payment delivery package "
    "service product price table window garden river market station office "
    "school library hospital station budget project schedule contract ticket "
    "letter message receipt manager student teacher driver company factory "
    "coffee bread apple water paper pencil camera printer monitor keyboard "
    "battery charger bottle basket jacket shoes chair lamp road bridge city"
).split()
EN_VERBS = (
    "check send review open close print sign update confirm deliver return "
    "order pay call visit read write keep bring carry finish start clean"
).split()
EN_ADJS = (
    "new old small large quick quiet bright dark green blue red final daily "
    "weekly monthly annual local public private simple clear free fresh warm"
).split()
EN_TIME = (
    "today",
    "tomorrow",
    "tonight",
    "before noon",
    "after lunch",
    "on Monday",
    "on Friday",
    "next week",
    "this month",
)
EN_SENTENCES = (
    "Please {verb} the {adj} {noun} {time}.",
    "The {noun} is {adj} and ready for {noun2}.",
    "We will {verb} your {noun} {time}.",
    "Thank you for your {noun}.",
    "Do not {verb} the {noun} without a {noun2}.",
    "Keep this {noun} for your records.",
    "All {noun}s must be {adj} by {month} {day}.",
    "Your {noun} number is {num}.",
    "Call us if the {noun} is not {adj}.",
    "{Adj} {noun} and {adj2} {noun2}",
)
EN_FIRST = (
    "Anna Ben Carla David Emma Frank Grace Henry Iris Jack Laura Mark Nina Oscar Paul Rosa Sam Tina Victor Wendy"
).split()
EN_LAST = (
    "Smith Brown Lee Wang Chen Garcia Miller Davis Wilson Taylor "
    "Clark Lewis Walker Young King Scott Green Baker Hill Adams"
).split()
EN_STREETS = "Main Oak Pine Maple Cedar Elm Lake Hill Park River Church Market Station Bridge Garden".split()
EN_STREET_KIND = "St. Street Ave. Avenue Road Rd. Lane Blvd.".split()
EN_CITIES = (
    "Springfield Riverside Fairview Madison Georgetown Franklin Clinton Salem Bristol Dover Ashland Oxford"
).split()
EN_PRODUCTS = (
    "USB Cable",
    "Desk Lamp",
    "Coffee Beans",
    "Green Tea",
    "Notebook A5",
    "Ball Pen",
    "Office Chair",
    "Printer Paper",
    "LED Bulb",
    "Water Bottle",
    "Phone Case",
    "Wireless Mouse",
    "Keyboard",
    "Monitor 24in",
    "Rice 5kg",
    "Milk 1L",
    "Orange Juice",
    "Paper Towels",
    "Hand Soap",
    "Batteries AA",
    "Sticky Notes",
)
MONTHS = "January February March April May June July August September October November December".split()
MONTHS_SHORT = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
DOMAINS = "example.com mail.example.org shop.example.net test.example.com".split()

ZH_CITIES = (
    "北京 上海 广州 深圳 杭州 南京 成都 武汉 西安 天津 重庆 苏州 长沙 郑州 青岛 厦门 宁波 合肥 济南 昆明"
).split()
ZH_DISTRICTS = "朝阳 海淀 浦东 黄浦 天河 南山 西湖 鼓楼 武侯 江汉 雁塔 和平 高新 滨江 开发".split()
ZH_ROADS = "人民 中山 解放 建设 和平 长江 黄河 新华 文化 东风 光明 胜利 友谊 幸福 花园".split()
ZH_COMPANY_WORDS = "华新 东方 长城 金星 明月 天地 海洋 宏达 永安 新世纪 红星 阳光 万家 恒通 德胜".split()
ZH_COMPANY_KIND = "科技 贸易 电子 食品 物流 建筑 文化 医药 服装 家具 网络 信息".split()
ZH_PRODUCTS = (
    "苹果 香蕉 牛奶 面包 大米 鸡蛋 茶叶 咖啡 矿泉水 饮料 衣服 鞋子 手机 电脑 键盘 "
    "显示器 打印机 纸张 文具 书籍 桌子 椅子 台灯 雨伞 毛巾 牙膏 洗发水 饼干 果汁 蔬菜"
).split()
ZH_UNITS = "个 件 箱 瓶 包 台 本 张 盒 袋".split()
ZH_FIELDS = (
    "发票号码",
    "开票日期",
    "客户名称",
    "联系电话",
    "收货地址",
    "订单编号",
    "付款方式",
    "合计金额",
    "备注",
    "经办人",
    "审核人",
    "开户银行",
    "账号",
    "税率",
    "规格型号",
)
ZH_PAYMENT = "现金 微信支付 支付宝 银行转账 信用卡".split()
ZH_SUBJECTS = "我们 公司 本店 客户 学生 老师 员工 部门 大家 他们 你们 政府 医院 学校".split()
ZH_VERBS = (
    "提供 支持 完成 参加 组织 管理 检查 注意 欢迎 感谢 联系 购买 销售 发展 提高 使用 需要 "
    "希望 保证 实现 学习 研究 安排 解决 改进 准备"
).split()
ZH_OBJECTS = (
    "服务 产品 工作 计划 项目 会议 活动 质量 安全 信息 系统 数据 网络 问题 方法 结果 情况 "
    "目标 环境 健康 教育 技术 经济 文化 历史 社会 市场 合同 报告 通知 方案 课程 资料 设备"
).split()
ZH_ADJS = "重要 主要 全部 安全 方便 快速 免费 优惠 良好 优质 及时 认真 新的 详细 基本".split()
ZH_TIME = "今天 明天 昨天 上午 下午 本周 下周 本月 年底 每天 周末".split()
ZH_SENTENCES = (
    "{subj}{verb}{adj}的{obj}",
    "{subj}将于{time}{verb}{obj}",
    "请{verb}{obj}，谢谢合作。",
    "{time}{subj}要{verb}{obj}和{obj2}",
    "关于{obj}{verb}的通知",
    "{subj}非常{verb}各位的{obj}",
    "为了{verb}{obj}，{subj}{verb2}了{obj2}",
    "本{obj}由{subj}负责{verb}",
    "欢迎光临，祝您购物愉快！",
    "如有问题请与{subj}联系",
    "{adj}{obj}，{adj2}{obj2}",
    "请保存好您的购物凭证",
    "商品售出后七天内可以退换",
    "{city}是一座美丽的城市",
)
MIXED_TEMPLATES = (
    "型号：{code}",
    "订单号 Order No. {num}",
    "{zh_product} {en_product} {price}",
    "邮箱：{email}",
    "Wi-Fi密码：{code}",
    "{zh_field} {en_word}：{num}",
    "{city} {en_city} {zip}",
    "总计 Total：￥{price}",
    "日期 Date：{date}",
    "{zh_product} x{qty} {price}元",
    "联系人：{en_name} 电话：{phone}",
    "{zh_obj} ({en_word})",
    "第{qty}页 Page {qty}",
    "APP下载：{domain}",
)


def pick(rng: Rng, seq: Sequence[T]) -> T:
    # Index-based choice keeps Python types (rng.choice would return numpy scalars).
    return seq[int(rng.integers(len(seq)))]


def digits(rng: Rng, n: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, n))


def alnum_code(rng: Rng) -> str:
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    head = "".join(pick(rng, letters) for _ in range(int(rng.integers(2, 4))))
    return f"{head}-{digits(rng, int(rng.integers(3, 6)))}"


def price(rng: Rng) -> str:
    value = float(np.exp(rng.uniform(0.0, 9.0)))
    return f"{value:,.2f}" if rng.random() < 0.5 else f"{value:.2f}"


def date_en(rng: Rng) -> str:
    y, m, d = int(rng.integers(2015, 2026)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    style = int(rng.integers(4))
    if style == 0:
        return f"{y}-{m:02d}-{d:02d}"
    if style == 1:
        return f"{d:02d}/{m:02d}/{y}"
    if style == 2:
        return f"{MONTHS[m - 1]} {d}, {y}"
    return f"{d} {MONTHS_SHORT[m - 1]} {y}"


def date_zh(rng: Rng) -> str:
    y, m, d = int(rng.integers(2015, 2026)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return f"{y}年{m}月{d}日"


def phone(rng: Rng) -> str:
    if rng.random() < 0.5:
        return f"1{int(rng.integers(30, 90))}{digits(rng, 8)}"
    return f"0{int(rng.integers(10, 99))}-{digits(rng, 8)}"


def email(rng: Rng) -> str:
    return f"{pick(rng, EN_FIRST).lower()}.{pick(rng, EN_LAST).lower()}@{pick(rng, DOMAINS)}"


def en_name(rng: Rng) -> str:
    return f"{pick(rng, EN_FIRST)} {pick(rng, EN_LAST)}"


def en_sentence(rng: Rng) -> str:
    adj = pick(rng, EN_ADJS)
    return pick(rng, EN_SENTENCES).format(
        verb=pick(rng, EN_VERBS),
        adj=adj,
        Adj=adj.capitalize(),
        adj2=pick(rng, EN_ADJS),
        noun=pick(rng, EN_NOUNS),
        noun2=pick(rng, EN_NOUNS),
        time=pick(rng, EN_TIME),
        month=pick(rng, MONTHS),
        day=int(rng.integers(1, 29)),
        num=digits(rng, 6),
    )


def en_line(rng: Rng) -> str:
    """English / alphanumeric line: document fields or a short sentence."""
    kind = int(rng.integers(12))
    if kind == 0:
        return f"Invoice No. {pick(rng, ['INV', 'NO', 'A'])}-{digits(rng, 6)}"
    if kind == 1:
        return f"{pick(rng, ['Date', 'Due Date', 'Issued'])}: {date_en(rng)}"
    if kind == 2:
        return f"{pick(rng, ['Total', 'Subtotal', 'Amount Due', 'Tax (13%)'])}: ${price(rng)}"
    if kind == 3:
        return (
            f"{int(rng.integers(1, 999))} {pick(rng, EN_STREETS)} {pick(rng, EN_STREET_KIND)}, "
            f"{pick(rng, EN_CITIES)} {digits(rng, 5)}"
        )
    if kind == 4:
        return f"Tel: +86 {digits(rng, 3)}-{digits(rng, 4)}-{digits(rng, 4)}"
    if kind == 5:
        return f"{pick(rng, EN_PRODUCTS)} x{int(rng.integers(1, 20))} {price(rng)}"
    if kind == 6:
        return f"Order #{digits(rng, 8)}"
    if kind == 7:
        return f"Email: {email(rng)}"
    if kind == 8:
        return f"Customer: {en_name(rng)}"
    if kind == 9:
        return f"SKU {alnum_code(rng)} Qty {int(rng.integers(1, 50))}"
    return en_sentence(rng)


def zh_sentence(rng: Rng) -> str:
    return pick(rng, ZH_SENTENCES).format(
        subj=pick(rng, ZH_SUBJECTS),
        verb=pick(rng, ZH_VERBS),
        verb2=pick(rng, ZH_VERBS),
        obj=pick(rng, ZH_OBJECTS),
        obj2=pick(rng, ZH_OBJECTS),
        adj=pick(rng, ZH_ADJS),
        adj2=pick(rng, ZH_ADJS),
        time=pick(rng, ZH_TIME),
        city=pick(rng, ZH_CITIES),
    )


def zh_company(rng: Rng) -> str:
    return f"{pick(rng, ZH_CITIES)}{pick(rng, ZH_COMPANY_WORDS)}{pick(rng, ZH_COMPANY_KIND)}有限公司"


def zh_address(rng: Rng) -> str:
    return f"{pick(rng, ZH_CITIES)}市{pick(rng, ZH_DISTRICTS)}区{pick(rng, ZH_ROADS)}路{int(rng.integers(1, 999))}号"


def zh_line(rng: Rng) -> str:
    """Chinese line: invoice/receipt fields, addresses, company names or sentences."""
    kind = int(rng.integers(10))
    if kind == 0:
        return f"发票号码：{digits(rng, 8)}"
    if kind == 1:
        return f"开票日期：{date_zh(rng)}"
    if kind == 2:
        return zh_address(rng)
    if kind == 3:
        return zh_company(rng)
    if kind == 4:
        return f"合计金额：￥{price(rng)}"
    if kind == 5:
        return f"{pick(rng, ZH_PRODUCTS)} {int(rng.integers(1, 30))}{pick(rng, ZH_UNITS)} 单价{price(rng)}元"
    if kind == 6:
        return f"付款方式：{pick(rng, ZH_PAYMENT)}"
    return zh_sentence(rng)


def mixed_line(rng: Rng) -> str:
    """Chinese and Latin in one line, as in bilingual receipts and forms."""
    return pick(rng, MIXED_TEMPLATES).format(
        code=alnum_code(rng),
        num=digits(rng, int(rng.integers(6, 11))),
        zh_product=pick(rng, ZH_PRODUCTS),
        en_product=pick(rng, EN_PRODUCTS),
        price=price(rng),
        email=email(rng),
        zh_field=pick(rng, ZH_FIELDS),
        en_word=pick(rng, EN_NOUNS).capitalize(),
        city=pick(rng, ZH_CITIES),
        en_city=pick(rng, EN_CITIES),
        zip=digits(rng, 6),
        date=date_en(rng),
        qty=int(rng.integers(1, 20)),
        en_name=en_name(rng),
        phone=phone(rng),
        zh_obj=pick(rng, ZH_OBJECTS),
        domain=pick(rng, DOMAINS),
    )


# Line kinds cycle by image index: 40% Chinese, 40% English/alphanumeric, 20% mixed.
LINE_KINDS: tuple[tuple[Callable[[Rng], str], str], ...] = (
    (zh_line, "，"),
    (en_line, " "),
    (zh_line, "，"),
    (en_line, " "),
    (mixed_line, " "),
)


def random_line_text(rng: Rng, kind: int) -> str:
    make, joiner = LINE_KINDS[kind % len(LINE_KINDS)]
    text = make(rng)
    # Some long lines too, so widths span the whole range the rec model sees.
    if rng.random() < 0.3:
        text = f"{text.rstrip('。')}{joiner}{make(rng)}"
    return text


# ---------------------------------------------------------------------------
# Image helpers
# ---------------------------------------------------------------------------


def light_color(rng: Rng) -> np.ndarray:
    """Paper-like background: near white, sometimes tinted (beige, blue, grey, ...)."""
    if rng.random() < 0.5:
        return np.full(3, rng.uniform(225, 255))
    return rng.uniform(175, 255, 3)


def dark_color(rng: Rng) -> np.ndarray:
    """Ink: black or dark grey mostly, sometimes dark blue/red/green."""
    if rng.random() < 0.7:
        return np.full(3, rng.uniform(0, 80))
    base = rng.uniform(0, 60, 3)
    base[int(rng.integers(3))] += rng.uniform(40, 110)
    return base


def background(rng: Rng, h: int, w: int) -> np.ndarray:
    """Flat or gradient background plus low-frequency 'paper' texture, float HxWx3."""
    c0 = light_color(rng)
    c1 = c0 + rng.uniform(-25, 25, 3) if rng.random() < 0.5 else c0
    t = np.linspace(0.0, 1.0, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0.0, 1.0, h)[:, None, None]
    bg = c0 * (1 - t) + c1 * t
    bg = np.broadcast_to(bg, (h, w, 3)).astype(np.float64)
    amp = rng.uniform(0, 6)
    if amp > 1:
        coarse = rng.normal(0, amp, (max(2, h // 24), max(2, w // 24)))
        tex = np.asarray(Image.fromarray(coarse.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BICUBIC))
        bg += tex[:, :, None]
    return bg


def compose(
    bg: np.ndarray, mask: Image.Image, color: np.ndarray | Image.Image, rng: Rng, noise_max: float
) -> np.ndarray:
    """Alpha-blend ink over background, then add sensor-like Gaussian noise."""
    alpha = np.asarray(mask, dtype=np.float32)[:, :, None] / 255.0 * rng.uniform(0.85, 1.0)
    ink = np.asarray(color, dtype=np.float32) if isinstance(color, Image.Image) else color
    out: np.ndarray = bg * (1 - alpha) + ink * alpha
    out += rng.normal(0, rng.uniform(0, noise_max), out.shape)
    pixels: np.ndarray = np.clip(out, 0, 255).round().astype(np.uint8)
    return pixels


def soften(mask: Image.Image, rng: Rng, blur_p: float, lowres_p: float) -> Image.Image:
    """Simulate focus blur and low-resolution capture on the ink mask."""
    if rng.random() < lowres_p:
        f = rng.uniform(0.6, 0.85)
        small = mask.resize((max(1, round(mask.width * f)), max(1, round(mask.height * f))), Image.Resampling.BILINEAR)
        mask = small.resize(mask.size, Image.Resampling.BILINEAR)
    if rng.random() < blur_p:
        mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    return mask


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def encode_line(img: Image.Image) -> bytes:
    """16-colour (4-bit) palette PNG: keeps text edges and some noise at ~1/3 the size."""
    pal = img.convert("RGB").quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return png_bytes(pal)


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    """Compression artefacts, as in crops taken from photos or scans."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert(img.mode)


def encode_page(img: Image.Image) -> tuple[bytes, str]:
    """Progressive JPEG q85 or PNG, whichever is smaller."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, optimize=True, progressive=True)  # progressive: ~5% smaller
    jpg = buf.getvalue()
    png = png_bytes(img)
    return (jpg, "jpg") if len(jpg) <= len(png) else (png, "png")


# ---------------------------------------------------------------------------
# Text-line crops
# ---------------------------------------------------------------------------

LINE_MIN_W, LINE_MAX_W = 100, 900


def line_height_ratio(spec: FontSpec) -> float:
    font = load_font(spec, 100)
    ascent, descent = font.getmetrics()
    return (ascent + descent) / 100.0


def fits_font(spec: FontSpec, text: str) -> bool:
    return all(has_glyph(spec, c) for c in text)


def render_line(rng: Rng, text: str) -> Image.Image | None:
    """Render one line crop; None if the text does not fit the width range."""
    spec = pick_font(rng, text)
    if not fits_font(spec, text):
        spec = CJK_FONTS[0]
    height = int(rng.integers(32, 65))
    pad_top, pad_bottom = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    size = max(12, int((height - pad_top - pad_bottom) / line_height_ratio(spec)))
    font = load_font(spec, size)
    text_w = math.ceil(font.getlength(text))
    pad_l, pad_r = int(rng.integers(2, 30)), int(rng.integers(2, 30))
    width = pad_l + text_w + pad_r
    if not LINE_MIN_W <= width <= LINE_MAX_W:
        return None
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).text((pad_l, pad_top), text, fill=255, font=font)
    # Tilt only as far as the vertical padding allows, so no glyph is clipped.
    max_deg = min(1.5, math.degrees(math.atan(2 * max(0, min(pad_top, pad_bottom) - 0.5) / width)))
    if max_deg > 0.05 and rng.random() < 0.5:
        mask = mask.rotate(rng.uniform(-max_deg, max_deg), resample=Image.Resampling.BICUBIC)
    mask = soften(mask, rng, blur_p=0.4, lowres_p=0.2)
    bg = background(rng, height, width)
    img = Image.fromarray(compose(bg, mask, dark_color(rng), rng, noise_max=3.5), "RGB")
    if rng.random() < 0.2:
        img = jpeg_roundtrip(img, int(rng.integers(40, 80)))
    return img.convert("L") if rng.random() < 0.3 else img


def make_line(rng: Rng, kind: int, seen: set[str]) -> tuple[str, Image.Image]:
    """Draw texts until one is new (keeps splits disjoint) and fits the width range."""
    for _ in range(200):
        text = random_line_text(rng, kind)
        if text in seen:
            continue
        img = render_line(rng, text)
        if img is not None:
            seen.add(text)
            return text, img
    raise RuntimeError("could not generate a fitting line")


def write_lines(out: Path, split: str, count: int, seed: int, seen: set[str]) -> None:
    folder = out / "ocr_lines" / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        # One generator per image: an image does not depend on how many draws came before.
        rng = np.random.default_rng([seed, 1, SPLIT_IDS[split], i])
        text, img = make_line(rng, i, seen)
        name = f"{split}_{i:04d}.png"
        (folder / name).write_bytes(encode_line(img))
        rows.append(f"{name}\t{text}\n")
    (folder / "labels.tsv").write_text("".join(rows), encoding="utf-8")


# ---------------------------------------------------------------------------
# Document pages
# ---------------------------------------------------------------------------

# Height/width ratios: A4, letter, square, landscape A4, 4:3 landscape, receipt.
PAGE_ASPECTS = (1.414, 1.294, 1.0, 0.707, 0.75, 1.8)
TITLES_EN = ("INVOICE", "RECEIPT", "PURCHASE ORDER", "Monthly Report", "Delivery Note", "Price List", "NOTICE")
TITLES_ZH = ("增值税普通发票", "购物小票", "采购订单", "工作报告", "送货单", "价格表", "会议通知", "入库单")


@dataclass
class Item:
    text: str
    box: Box  # 4 corner points, clockwise from top-left


@dataclass
class Page:
    width: int
    height: int
    mask: Image.Image  # ink coverage
    color: Image.Image  # ink colour under the mask
    items: list[Item]


def draw_text(page: Page, xy: tuple[int, int], text: str, spec: FontSpec, size: int, ink: Ink) -> int:
    """Draw text at xy (top-left of the line box), record its ink box, return line height."""
    if not fits_font(spec, text):
        spec = CJK_FONTS[0]
    font = load_font(spec, size)
    x, y = xy
    ImageDraw.Draw(page.mask).text((x, y), text, fill=255, font=font)
    # Stroke on the colour layer so anti-aliased edges take the ink colour, not black.
    ImageDraw.Draw(page.color).text((x, y), text, fill=ink, font=font, stroke_width=1, stroke_fill=ink)
    x0, y0, x1, y1 = (round(v) for v in font.getbbox(text))
    box = [[x + x0 - 2, y + y0 - 2], [x + x1 + 2, y + y0 - 2], [x + x1 + 2, y + y1 + 2], [x + x0 - 2, y + y1 + 2]]
    page.items.append(Item(text, box))
    ascent, descent = font.getmetrics()
    return ascent + descent


def fitting_text(
    rng: Rng, make: Callable[[Rng], str], fonts: tuple[FontSpec, FontSpec], size: int, max_w: int
) -> str | None:
    for _ in range(30):
        text = make(rng)
        if load_font(font_for(text, fonts), size).getlength(text) <= max_w:
            return text
    return None


def page_fonts(rng: Rng) -> tuple[FontSpec, FontSpec]:
    return pick(rng, LATIN_FONTS), pick(rng, CJK_FONTS)


def font_for(text: str, fonts: tuple[FontSpec, FontSpec]) -> FontSpec:
    return fonts[1] if is_cjk(text) else fonts[0]


def block_lines(
    rng: Rng,
    page: Page,
    x: int,
    y: int,
    max_w: int,
    fonts: tuple[FontSpec, FontSpec],
    make: Callable[[Rng], str],
    n: int,
    size: int,
    ink: Ink,
) -> int:
    """A paragraph-like block of n lines; returns the y below it."""
    spacing = rng.uniform(1.2, 1.7)
    for _ in range(n):
        if y + size * 1.3 > page.height - 20:
            break
        text = fitting_text(rng, make, fonts, size, max_w)
        if text is None:
            continue
        draw_text(page, (x, y), text, font_for(text, fonts), size, ink)
        y += int(size * spacing)
    return y


def block_table(
    rng: Rng, page: Page, x: int, y: int, max_w: int, fonts: tuple[FontSpec, FontSpec], size: int, ink: Ink
) -> int:
    """Item table: name / qty / amount columns, amounts right-aligned; each cell is its own box."""
    zh = rng.random() < 0.5
    rows = [("商品名称", "数量", "金额") if zh else ("Item", "Qty", "Amount")]
    for _ in range(int(rng.integers(3, 8))):
        name = pick(rng, ZH_PRODUCTS) if zh else pick(rng, EN_PRODUCTS)
        rows.append((name, str(int(rng.integers(1, 40))), price(rng)))

    def widest(col: int) -> float:
        return max(load_font(font_for(r[col], fonts), size).getlength(r[col]) for r in rows)

    # Shrink the font until the columns stay clearly apart (det should see separate cells).
    while widest(0) + widest(1) + widest(2) + 3 * size > max_w and size > 12:
        size -= 2
    qty_x = x + int(min(max(widest(0) + 1.5 * size, 0.45 * max_w), max_w - widest(2) - widest(1) - 1.5 * size))
    row_h = int(size * 1.6)
    for r, cells in enumerate(rows):
        if y + row_h > page.height - 20:
            break
        amount_x = x + max_w - int(load_font(font_for(cells[2], fonts), size).getlength(cells[2]))
        for cx, cell in zip((x, qty_x, amount_x), cells, strict=True):
            draw_text(page, (cx, y), cell, font_for(cell, fonts), size, ink)
        if r == 0:
            rule(page, (x, y + row_h - 4), (x + max_w, y + row_h - 4), ink, 1)
        y += row_h
    return y


def layout_column(
    rng: Rng, page: Page, x0: int, y0: int, col_w: int, fonts: tuple[FontSpec, FontSpec], base: int
) -> None:
    """Fill one column top to bottom with a random sequence of blocks."""
    y = y0
    while y < page.height - base * 3:
        r, g, b = (int(v) for v in dark_color(rng))
        ink = (r, g, b)
        kind = int(rng.integers(4))
        indent = int(rng.integers(0, max(1, col_w // 6)))
        size = max(14, int(base * rng.uniform(0.8, 1.3)))
        if kind == 0:
            y = block_table(rng, page, x0, y, col_w, fonts, size, ink)
        elif kind == 1:
            make = pick(rng, (zh_sentence, en_sentence))
            y = block_lines(rng, page, x0 + indent, y, col_w - indent, fonts, make, int(rng.integers(2, 6)), size, ink)
        else:
            make = pick(rng, (zh_line, en_line, mixed_line))
            y = block_lines(rng, page, x0 + indent, y, col_w - indent, fonts, make, int(rng.integers(1, 5)), size, ink)
        if rng.random() < 0.25:
            rule(page, (x0, y + base // 3), (x0 + col_w, y + base // 3), ink, 1)
        y += int(base * rng.uniform(0.8, 2.5))


def rule(page: Page, a: tuple[int, int], b: tuple[int, int], ink: Ink, width: int) -> None:
    ImageDraw.Draw(page.mask).line([a, b], fill=255, width=width)
    ImageDraw.Draw(page.color).line([a, b], fill=ink, width=width + 2)


def decorate(rng: Rng, page: Page, margin: int) -> None:
    """Non-text marks (frame, red seal) so the det model also sees ink that is not text."""
    if rng.random() < 0.4:
        inset = margin // 2
        box = (inset, inset, page.width - inset, page.height - inset)
        ImageDraw.Draw(page.mask).rectangle(box, outline=255, width=2)
        ImageDraw.Draw(page.color).rectangle(box, outline=(40, 40, 40), width=4)
    if rng.random() < 0.35:
        r = int(rng.integers(35, 70))
        cx = int(rng.integers(page.width // 2, page.width - margin - r))
        cy = int(rng.integers(page.height // 2, page.height - margin - r))
        ring = (cx - r, cy - r, cx + r, cy + r)
        red = (int(rng.integers(170, 220)), 30, 40)
        # Seals are translucent red ink: a weaker mask value lets the paper show through.
        ImageDraw.Draw(page.mask).ellipse(ring, outline=int(rng.integers(120, 200)), width=3)
        ImageDraw.Draw(page.color).ellipse(ring, outline=red, width=5)


def rotate_point(p: list[int], cx: float, cy: float, deg: float) -> list[int]:
    """Where PIL's Image.rotate(deg) (counter-clockwise, about cx, cy) moves point p."""
    a = math.radians(deg)
    dx, dy = p[0] - cx, p[1] - cy
    return [round(cx + dx * math.cos(a) + dy * math.sin(a)), round(cy - dx * math.sin(a) + dy * math.cos(a))]


def layout_page(rng: Rng, choose_fonts: Callable[[Rng], tuple[FontSpec, FontSpec]] = page_fonts) -> tuple[Page, int]:
    """The ink of a page (title, blocks, rules, frame, seal) and its labelled boxes; also the base font size."""
    long_side = int(rng.integers(800, 1051))
    aspect = pick(rng, PAGE_ASPECTS)
    h, w = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
    page = Page(w, h, Image.new("L", (w, h), 0), Image.new("RGB", (w, h), (0, 0, 0)), [])
    fonts = choose_fonts(rng)
    base = int(rng.integers(16, 30))
    margin = int(rng.integers(20, 70))
    title = pick(rng, TITLES_ZH) if rng.random() < 0.5 else pick(rng, TITLES_EN)
    tsize = int(base * rng.uniform(1.5, 2.2))
    while load_font(font_for(title, fonts), tsize).getlength(title) > w - 2 * margin:
        tsize -= 2  # narrow receipts: keep the title on the page
    tfont = load_font(font_for(title, fonts), tsize)
    tx = margin if rng.random() < 0.5 else max(margin, int((w - tfont.getlength(title)) / 2))
    y = margin + draw_text(page, (tx, margin), title, font_for(title, fonts), tsize, (0, 0, 0)) + int(base * 1.5)
    two_cols = w > h and rng.random() < 0.7
    if two_cols:
        col_w = (w - 3 * margin) // 2
        layout_column(rng, page, margin, y, col_w, fonts, base)
        layout_column(rng, page, 2 * margin + col_w, y, col_w, fonts, base)
    else:
        layout_column(rng, page, margin, y, w - 2 * margin, fonts, base)
    decorate(rng, page, margin)
    return page, base


def render_page(rng: Rng) -> tuple[Image.Image, list[Item]]:
    page, _ = layout_page(rng)
    w, h = page.width, page.height
    # Skew the whole page a little, as a slightly crooked scan or photo.
    deg = rng.uniform(-2.0, 2.0) if rng.random() < 0.6 else 0.0
    mask, color = page.mask, page.color
    if deg:
        mask = mask.rotate(deg, resample=Image.Resampling.BICUBIC)
        color = color.rotate(deg, resample=Image.Resampling.BICUBIC)
        for it in page.items:
            it.box = [rotate_point(p, w / 2, h / 2, deg) for p in it.box]
    for it in page.items:  # the 2 px box margin may poke past the border
        it.box = [[min(max(px, 0), w - 1), min(max(py, 0), h - 1)] for px, py in it.box]
    mask = soften(mask, rng, blur_p=0.4, lowres_p=0.15)
    bg = background(rng, h, w)
    # Uneven lighting: a soft shadow across the page.
    shade = np.linspace(rng.uniform(0.8, 1.0), 1.0, w if rng.random() < 0.5 else h)
    bg *= shade[None, :, None] if shade.size == w else shade[:, None, None]
    img = Image.fromarray(compose(bg, mask, color, rng, noise_max=2.5), "RGB")
    return (img.convert("L") if rng.random() < 0.4 else img), page.items


def write_pages(out: Path, split: str, count: int, seed: int) -> None:
    folder = out / "ocr_pages" / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        rng = np.random.default_rng([seed, 2, SPLIT_IDS[split], i])
        img, items = render_page(rng)
        data, ext = encode_page(img)
        name = f"{split}_{i:04d}.{ext}"
        (folder / name).write_bytes(data)
        labels = [{"transcription": it.text, "points": it.box} for it in items]
        rows.append(f"{name}\t{json.dumps(labels, ensure_ascii=False)}\n")
    (folder / "labels.tsv").write_text("".join(rows), encoding="utf-8")


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------

SPLIT_IDS = {"calib": 0, "eval": 1, "tune": 2}


def main(argv: Sequence[str] | None = None) -> None:
    # Imported here: those modules import this one.
    from ocr_real_lines import check_real_fonts, write_real_lines
    from ocr_real_pages import write_real_pages

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("calibration_data"))
    ap.add_argument("--calib-lines", type=int, default=100)
    ap.add_argument("--calib-pages", type=int, default=16)
    ap.add_argument("--tune-lines-per-slice", type=int, default=11)
    ap.add_argument("--eval-lines-per-slice", type=int, default=30)
    ap.add_argument("--tune-pages-per-slice", type=int, default=2)
    ap.add_argument("--eval-pages-per-slice", type=int, default=4)
    args = ap.parse_args(argv)
    check_fonts()
    check_real_fonts()
    # Regenerate from scratch so stale files from an earlier run cannot linger.
    for sub in ("ocr_lines", "ocr_pages"):
        shutil.rmtree(args.out / sub, ignore_errors=True)
    seen: set[str] = set()  # calib, then tune, then eval: no line text repeats across splits
    write_lines(args.out, "calib", args.calib_lines, args.seed, seen)
    write_real_lines(args.out, "tune", SPLIT_IDS["tune"], args.tune_lines_per_slice, args.seed, seen)
    write_real_lines(args.out, "eval", SPLIT_IDS["eval"], args.eval_lines_per_slice, args.seed, seen)
    write_pages(args.out, "calib", args.calib_pages, args.seed)
    write_real_pages(args.out, "tune", SPLIT_IDS["tune"], args.tune_pages_per_slice, args.seed)
    write_real_pages(args.out, "eval", SPLIT_IDS["eval"], args.eval_pages_per_slice, args.seed)
    print(f"wrote calib/tune/eval lines and pages to {args.out}; next: python tools/ocr_det_crops.py --data {args.out}")


if __name__ == "__main__":
    main()
