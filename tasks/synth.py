"""Synthetic beauty-shop data with signal a model can learn.

Items get real-looking text (brand, adjective, product noun, shade or scent, size,
a description). Users have latent tastes (one main and one side category) and shop
in sessions; with probability ``follow_prob`` their next item is the planted
"follow-up" of their last one (shampoo -> the same line's conditioner, say), so both
text similarity (category words) and order carry signal. Everything is drawn from
one seeded generator: the same arguments give the same files, byte for byte.

Users are generated in chunks of ``chunk_users`` and each chunk is written as its
own events file, so 1M users fit in memory.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from nightrec.config import ContractError, check_int, check_number

log = logging.getLogger(__name__)

CATEGORIES: dict[str, tuple[list[str], list[str]]] = {
    # category: (product nouns, adjectives)
    "Skincare": (
        [
            "Face Serum",
            "Moisturizer",
            "Gel Cleanser",
            "Toner",
            "Eye Cream",
            "Sheet Mask",
            "Sunscreen SPF 50",
            "Exfoliating Scrub",
            "Night Cream",
            "Facial Oil",
        ],
        [
            "Hydrating",
            "Brightening",
            "Anti-Aging",
            "Soothing",
            "Oil-Free",
            "Firming",
            "Vitamin C",
            "Retinol",
            "Hyaluronic",
            "Gentle",
        ],
    ),
    "Hair Care": (
        [
            "Shampoo",
            "Conditioner",
            "Hair Oil",
            "Hair Mask",
            "Styling Gel",
            "Dry Shampoo",
            "Leave-In Spray",
            "Curl Cream",
            "Heat Protectant",
            "Scalp Scrub",
        ],
        [
            "Volumizing",
            "Repairing",
            "Color-Safe",
            "Smoothing",
            "Argan",
            "Keratin",
            "Sulfate-Free",
            "Anti-Frizz",
            "Strengthening",
            "Clarifying",
        ],
    ),
    "Makeup": (
        [
            "Foundation",
            "Concealer",
            "Lipstick",
            "Mascara",
            "Eyeliner",
            "Blush",
            "Eyeshadow Palette",
            "Primer",
            "Setting Powder",
            "Lip Gloss",
        ],
        [
            "Matte",
            "Long-Wear",
            "Velvet",
            "Shimmer",
            "Waterproof",
            "Dewy",
            "Full-Coverage",
            "Creamy",
            "Sheer",
            "Satin",
        ],
    ),
    "Nails": (
        [
            "Nail Polish",
            "Top Coat",
            "Base Coat",
            "Gel Polish",
            "Cuticle Oil",
            "Nail File Set",
            "Nail Strengthener",
            "Polish Remover",
            "Nail Art Stickers",
            "Quick Dry Drops",
        ],
        [
            "Glossy",
            "Chip-Resistant",
            "Quick-Dry",
            "Crackle",
            "Holographic",
            "Nourishing",
            "Neon",
            "Pastel",
            "Glitter",
            "Classic",
        ],
    ),
    "Fragrance": (
        [
            "Eau de Parfum",
            "Eau de Toilette",
            "Body Mist",
            "Perfume Oil",
            "Cologne",
            "Solid Perfume",
            "Fragrance Gift Set",
            "Rollerball Perfume",
            "Hair Mist",
            "Scented Lotion",
        ],
        [
            "Floral",
            "Woody",
            "Citrus",
            "Oriental",
            "Fresh",
            "Musky",
            "Sweet",
            "Powdery",
            "Aquatic",
            "Spicy",
        ],
    ),
    "Bath & Body": (
        [
            "Body Wash",
            "Body Lotion",
            "Bath Bomb",
            "Body Scrub",
            "Hand Cream",
            "Shower Gel",
            "Body Butter",
            "Bath Salts",
            "Foot Cream",
            "Deodorant",
        ],
        [
            "Moisturizing",
            "Exfoliating",
            "Relaxing",
            "Energizing",
            "Shea",
            "Coconut",
            "Unscented",
            "Sensitive-Skin",
            "Organic",
            "Whipped",
        ],
    ),
    "Tools": (
        [
            "Makeup Brush Set",
            "Hair Dryer",
            "Curling Iron",
            "Flat Iron",
            "Tweezers",
            "Blending Sponge",
            "Eyelash Curler",
            "Facial Roller",
            "Hair Brush",
            "Mirror",
        ],
        [
            "Professional",
            "Travel",
            "Ceramic",
            "Ionic",
            "Precision",
            "Vegan",
            "Rose Quartz",
            "Compact",
            "Cordless",
            "Ergonomic",
        ],
    ),
    "Men's Grooming": (
        [
            "Beard Oil",
            "Shaving Cream",
            "Aftershave Balm",
            "Safety Razor",
            "Beard Trimmer",
            "Face Wash",
            "Pomade",
            "Beard Balm",
            "Shave Brush",
            "Body Spray",
        ],
        [
            "Sandalwood",
            "Cooling",
            "Cedar",
            "Charcoal",
            "Menthol",
            "Classic",
            "Sport",
            "Sensitive",
            "Bourbon",
            "Fresh",
        ],
    ),
}
CATEGORY_WEIGHTS = np.array([0.22, 0.18, 0.2, 0.1, 0.08, 0.1, 0.07, 0.05])
VARIANTS = [
    "Rose",
    "Vanilla",
    "Lavender",
    "Coconut",
    "Ruby Red",
    "Nude Beige",
    "Midnight Blue",
    "Peach",
    "Jasmine",
    "Mint",
    "Coral",
    "Ivory",
    "Amber",
    "Cherry Blossom",
    "Ocean",
    "Honey",
    "Plum",
    "Sage",
    "Gold",
    "Original",
]
SIZES = [
    "15 ml",
    "30 ml",
    "50 ml",
    "100 ml",
    "200 ml",
    "1.7 oz",
    "3.4 oz",
    "8 oz",
    "1 count",
    "2 pack",
]
BRANDS = [
    "Lumiere",
    "Velvetine",
    "Aurora Lab",
    "Maison Clair",
    "Petal & Pine",
    "NovaSkin",
    "Glow Theory",
    "Urban Bloom",
    "Silk Route",
    "Oak & Ember",
    "Blue Lagoon",
    "Pure Habit",
    "Luxe Nord",
    "Kind Botanics",
    "Ironwood",
    "Coral Bay",
    "Hush",
    "Vivid Co",
    "Alder & Ash",
    "Solstice",
    "Minted",
    "Opaline",
    "Terra Rosa",
    "Northbound",
]
BENEFITS = [
    "dry skin",
    "everyday use",
    "sensitive skin",
    "damaged hair",
    "a night out",
    "travel",
    "long-lasting results",
    "a salon finish at home",
    "all skin types",
    "a natural look",
]
TEXTURES = [
    "lightweight",
    "rich",
    "silky",
    "fast-absorbing",
    "non-greasy",
    "creamy",
    "fragrance-free",
    "dermatologist-tested",
    "cruelty-free",
    "vegan",
]


@dataclass(frozen=True)
class SynthConfig:
    users: int = 1_000
    items: int = 200
    seed: int = 42
    end: dt.date = dt.date(2026, 11, 1)  # last day of activity
    days: int = 60  # activity window before ``end``
    mean_items_per_user: float = 6.0
    follow_prob: float = 0.35  # chance the next item is the planted follow-up of the last
    cold_user_share: float = 0.02  # users who signed up but have no events yet
    inactive_item_share: float = 0.02
    chunk_users: int = 100_000
    fmt: str = "csv"  # csv | parquet | jsonl
    # timestamps are floored to this many seconds: 86_400 puts a user's events of a day on
    # one tied timestamp (real logs with day-level or second-level clocks)
    tick_seconds: int = 1
    ratings: bool = False  # every purchase is followed by a 'rating' event with a 1..5 value

    def __post_init__(self) -> None:
        check_int("users", self.users, 1, 50_000_000)
        check_int("items", self.items, 2, 5_000_000)
        check_int("seed", self.seed, 0, 2**32 - 1)
        check_int("days", self.days, 1, 3650)
        check_int("chunk_users", self.chunk_users, 1, 10_000_000)
        check_int("tick_seconds", self.tick_seconds, 1, 30 * 86_400)
        check_number("mean_items_per_user", self.mean_items_per_user, 0.0, 1000.0, lo_open=True)
        for name in ("follow_prob", "cold_user_share", "inactive_item_share"):
            check_number(name, getattr(self, name), 0.0, 1.0)
        if self.fmt not in ("csv", "parquet", "jsonl"):
            raise ContractError(f"unknown format {self.fmt!r}: use csv, parquet or jsonl")


def make_items(cfg: SynthConfig, rng: np.random.Generator) -> tuple[pl.DataFrame, dict]:
    """The item catalog, plus the latent structure users draw from."""
    n = cfg.items
    cats = list(CATEGORIES)
    cat = rng.choice(len(cats), size=n, p=CATEGORY_WEIGHTS)
    cat[: len(cats)] = np.arange(len(cats))[: min(n, len(cats))]  # every category present
    noun_i = rng.integers(0, 10, n)
    adj_i = rng.integers(0, 10, n)
    brand_i = (cat * 3 + rng.integers(0, 6, n)) % len(BRANDS)  # brands lean to categories
    variant_i = rng.integers(0, len(VARIANTS), n)
    size_i = rng.integers(0, len(SIZES), n)
    benefit_i = rng.integers(0, len(BENEFITS), n)
    texture_i = rng.integers(0, len(TEXTURES), n)
    titles, descs, tags = [], [], []
    for i in range(n):
        nouns, adjs = CATEGORIES[cats[cat[i]]]
        noun, adj = nouns[noun_i[i]], adjs[adj_i[i]]
        titles.append(
            f"{BRANDS[brand_i[i]]} {adj} {noun} - {VARIANTS[variant_i[i]]}, {SIZES[size_i[i]]}"
        )
        descs.append(
            f"A {TEXTURES[texture_i[i]]} {adj.lower()} {noun.lower()} "
            f"for {BENEFITS[benefit_i[i]]}. "
            f"Part of the {BRANDS[brand_i[i]]} {cats[cat[i]].lower()} line."
        )
        tags.append(f"{adj.lower()};{VARIANTS[variant_i[i]].lower()};{cats[cat[i]].lower()}")
    item_ids = [f"i{i:07d}" for i in range(n)]
    active = rng.random(n) >= cfg.inactive_item_share
    updated = dt.datetime.combine(cfg.end - dt.timedelta(days=cfg.days + 1), dt.time(), dt.UTC)
    items = pl.DataFrame(
        {
            "item_id": item_ids,
            "title": titles,
            "description": descs,
            "category": [cats[c] for c in cat],
            "brand": [BRANDS[b] for b in brand_i],
            "tags": tags,
            "active": active,
            "updated_at": [updated.strftime("%Y-%m-%dT%H:%M:%SZ")] * n,
        }
    )
    # Popularity inside a category is Zipf-like; the follow-up of an item is another
    # item of the same category and brand family (the planted sequential pattern).
    weight = 1.0 / (1.0 + rng.permutation(n)) ** 0.7
    by_cat = [np.flatnonzero(cat == c) for c in range(len(cats))]
    cum = [np.cumsum(weight[idx]) / weight[idx].sum() if len(idx) else None for idx in by_cat]
    follow = np.empty(n, dtype=np.int64)
    for idx in by_cat:
        if len(idx) == 0:
            continue
        follow[idx] = idx[rng.permutation(len(idx))] if len(idx) > 1 else idx
        same = follow[idx] == idx
        follow[idx[same]] = np.roll(idx, 1)[same]
    return items, {"cat": cat, "by_cat": by_cat, "cum": cum, "follow": follow}


def _draw_in_category(cats: np.ndarray, latent: dict, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(len(cats), dtype=np.int64)
    for c in np.unique(cats):
        rows = np.flatnonzero(cats == c)
        idx, cum = latent["by_cat"][c], latent["cum"][c]
        pick = np.searchsorted(cum, rng.random(len(rows)), side="right").clip(0, len(idx) - 1)
        out[rows] = idx[pick]
    return out


def make_events(
    cfg: SynthConfig, latent: dict, user_lo: int, user_hi: int, rng: np.random.Generator
) -> pl.DataFrame:
    """Events of users ``user_lo..user_hi-1``: a funnel of view/click/cart/purchase per visit."""
    n = user_hi - user_lo
    n_cats = len(CATEGORIES)
    present = np.array([len(ix) > 0 for ix in latent["by_cat"]])
    p = CATEGORY_WEIGHTS * present
    main = rng.choice(n_cats, size=n, p=p / p.sum())
    side = rng.choice(n_cats, size=n, p=p / p.sum())
    side = np.where(present[side], side, main)
    length = np.minimum(1 + rng.geometric(1.0 / cfg.mean_items_per_user, n), 60)
    length[rng.random(n) < cfg.cold_user_share] = 0
    start = rng.random(n) * cfg.days * 86_400.0
    end_ts = dt.datetime.combine(cfg.end + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()
    t0 = end_ts - cfg.days * 86_400.0

    users, items, clock, liked = [], [], [], []
    last = np.full(n, -1, dtype=np.int64)
    now = t0 + start
    for step in range(int(length.max(initial=0))):
        alive = np.flatnonzero(length > step)
        r = rng.random(len(alive))
        cat = np.where(r < 0.75, main[alive], side[alive])
        anywhere = rng.random(len(alive)) < 0.05
        cat[anywhere] = rng.choice(n_cats, size=int(anywhere.sum()), p=p / p.sum())
        pick = _draw_in_category(cat, latent, rng)
        follow = (last[alive] >= 0) & (rng.random(len(alive)) < cfg.follow_prob)
        pick[follow] = latent["follow"][last[alive][follow]]
        now[alive] += rng.exponential(6 * 3600.0, len(alive))
        last[alive] = pick
        users.append(alive)
        items.append(pick)
        liked.append(cat == main[alive])  # in the user's main taste: rated higher
        clock.append(now[alive].copy())
    if not users:
        return pl.DataFrame()
    u = np.concatenate(users)
    it = np.concatenate(items)
    ts = np.minimum(np.concatenate(clock), end_ts - 3600.0)
    # funnel: every visit is a view; some go on to click, add to cart, purchase
    click = rng.random(len(u)) < 0.35
    cart = click & (rng.random(len(u)) < 0.4)
    buy = cart & (rng.random(len(u)) < 0.5)
    funnel = [("view", None, 0), ("click", click, 30), ("add_to_cart", cart, 120)]
    funnel.append(("purchase", buy, 300))
    value = np.full(len(u), np.nan)
    if cfg.ratings:  # drawn last: without ratings the files stay byte for byte the same
        rated = np.where(np.concatenate(liked), 4.2, 2.8) + rng.normal(0.0, 1.0, len(u))
        value = np.clip(np.round(rated), 1, 5)
        funnel.append(("rating", buy, 600))
    parts = []
    for name, mask, delay in funnel:
        sel = slice(None) if mask is None else mask
        t = (ts[sel] + delay).round(0)
        parts.append(
            pl.DataFrame(
                {
                    "u": u[sel] + user_lo,
                    "i": it[sel],
                    "event_type": name,
                    "ts": np.floor(t / cfg.tick_seconds) * cfg.tick_seconds,
                    "value": value[sel] if name == "rating" else np.full(len(t), np.nan),
                }
            )
        )
    ev = pl.concat(parts).sort(["u", "ts", "event_type"])
    ev = ev.with_columns(
        pl.format("u{}", pl.col("u").cast(pl.Utf8).str.zfill(8)).alias("user_id"),
        pl.format("i{}", pl.col("i").cast(pl.Utf8).str.zfill(7)).alias("item_id"),
        pl.from_epoch(pl.col("ts").cast(pl.Int64), time_unit="s")
        .dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        .alias("ts"),
    )
    ev = ev.with_row_index("n").with_columns(
        pl.format("e{}-{}", pl.lit(user_lo), pl.col("n")).alias("event_id")
    )
    if cfg.ratings:
        rating = pl.col("value").fill_nan(None).cast(pl.Int64)
        return ev.select("event_id", "user_id", "item_id", "event_type", "ts", rating)
    return ev.select("event_id", "user_id", "item_id", "event_type", "ts")


def write_frame(df: pl.DataFrame, path: Path, fmt: str) -> Path:
    path = path.with_suffix({"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}[fmt])
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "csv":
        df.write_csv(tmp)
    elif fmt == "parquet":
        df.write_parquet(tmp)
    else:
        df.write_ndjson(tmp)
    tmp.replace(path)  # landing readers never see a half-written file
    return path


def generate(cfg: SynthConfig, out: Path) -> dict[str, int]:
    """Write ``items/``, ``users/`` and ``events/`` landing files under ``out``."""
    if cfg.users < 1 or cfg.items < 2:
        raise ValueError("synth needs at least 1 user and 2 items")
    if cfg.fmt not in ("csv", "parquet", "jsonl"):
        raise ValueError(f"unknown format {cfg.fmt!r}: use csv, parquet or jsonl")
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    items, latent = make_items(cfg, rng)
    for sub in ("items", "users", "events"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_frame(items, out / "items" / "items-00000", cfg.fmt)
    created = dt.datetime.combine(cfg.end - dt.timedelta(days=cfg.days), dt.time(), dt.UTC)
    n_events = 0
    for k, lo in enumerate(range(0, cfg.users, cfg.chunk_users)):
        hi = min(cfg.users, lo + cfg.chunk_users)
        chunk_rng = np.random.default_rng([cfg.seed, k])  # chunks independent of chunk count
        ev = make_events(cfg, latent, lo, hi, chunk_rng)
        users = pl.DataFrame({"user_id": [f"u{u:08d}" for u in range(lo, hi)]}).with_columns(
            pl.lit(created.strftime("%Y-%m-%dT%H:%M:%SZ")).alias("created_at")
        )
        write_frame(users, out / "users" / f"users-{k:05d}", cfg.fmt)
        if len(ev):
            write_frame(ev, out / "events" / f"events-{k:05d}", cfg.fmt)
        n_events += len(ev)
        log.info("synth: users %d..%d -> %d events", lo, hi - 1, len(ev))
    log.info(
        "synth: %d users, %d items, %d events in %.1fs -> %s",
        cfg.users,
        cfg.items,
        n_events,
        time.perf_counter() - started,
        out,
    )
    return {"users": cfg.users, "items": cfg.items, "events": n_events}
