"""ToyScenes: a synthetic image-caption world written in the precomp layout (SPEC §2.2).

A scene is a theme (kitchen, street, beach, ...) with 2-5 objects carrying attributes (colour, size,
material) and sometimes a person doing an action. Every word has a prototype in a small "semantic" space
(dimension `sem_dim`); prototypes of related words are close because they are built from shared parts:
object = category vector + theme vector(s) + own vector, colour = colour-family vector + own vector, ...
A region is the prototype of what it shows plus noise, projected to `feat_dim` through a fixed random
matrix and a ReLU (so features look like non-negative detector outputs); leftover regions show theme
background or nothing. The global feature is a noisy projection of the mean scene content.
Captions are English sentences from templates mentioning a random subset of the scene, sometimes an object
that is not there; some scenes are near-duplicates of another (one object or one attribute changed).

Everything is a pure function of the seed and the arguments: scenes and captions come from one random
stream per split, features from another, so changing `feat_dim` does not change the captions.
See docs/data.md for the design and the difficulty knobs.
"""
from __future__ import annotations

import functools
import json
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from itrbench.errors import ConfigError
from itrbench.utils import atomic_path

GENERATOR_VERSION = 2  # 2: calibrated defaults (docs/data.md, "Toy calibration")

# Default split sizes (images): the calibrated toy (docs/data.md, "Toy calibration"). Test splits are exact
# protocol sizes (F30K 1K; toy-coco's testall has 5,000 images so both COCO protocols run); train is what a run
# can afford to converge on within the CPU budget; dev (200) is the per-epoch convergence signal.
DATASETS: dict[str, dict[str, int]] = {
    "toy-f30k": {"train": 1000, "dev": 200, "test": 1000},
    "toy-coco": {"train": 1000, "dev": 200, "testall": 5000},
}
N_REGIONS = 8  # regions per image at toy scale: room for 5 objects + agent + action + background

# Difficulty and shape knobs with their defaults (all keyword arguments of generate_toyscenes).
KNOBS: dict[str, float | int] = {
    "sem_dim": 64,              # dimension of the semantic space the prototypes live in
    "min_objects": 2,           # objects per scene, uniform in [min_objects, max_objects]
    "max_objects": 5,
    "action_prob": 0.5,         # probability that a person doing something is in the scene
    "outfit_prob": 0.5,         # probability that this person wears a coloured piece of clothing
    "attr_extra_prob": 0.4,     # per object: chance of a size and of a material besides the colour
    "word_closeness": 1.0,      # weight of shared (category/theme/family) parts in word prototypes
    "attr_strength": 0.6,       # weight of attribute prototypes in an object's region
    "region_noise": 0.3,        # norm of the Gaussian noise added to each region's semantic vector
    "feature_noise": 0.1,       # per-dimension noise added after projection to feat_dim
    "background_strength": 0.5, # weight of the theme vector in background regions
    "global_noise": 0.5,        # norm of the noise on the global feature's semantic vector
    "near_dup_frac": 0.1,       # fraction of images that copy another image's scene with one change
    "hallucination_prob": 0.05,  # per caption: chance of mentioning an object the image does not show
    "attr_mention_prob": 0.8,   # per mentioned object and attribute: chance the caption names it
    "theme_skew": 0.6,          # Zipf exponent of theme and object frequencies (0 = uniform)
}
_PROB_KNOBS = {"action_prob", "outfit_prob", "attr_extra_prob", "near_dup_frac", "hallucination_prob",
               "attr_mention_prob"}
_INT_KNOBS = {"sem_dim", "min_objects", "max_objects"}

# ---------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------
PALETTES = {
    "any": "red blue green yellow white black brown orange pink gray purple silver",
    "vehicle": "red blue white black silver yellow gray green",
    "animal": "white black brown gray",
    "flower": "red yellow pink white purple",
    "plant": "green yellow brown",
    "cloth": "red blue green yellow white black brown orange pink gray purple",
    "none": "",
}
SIZES = ["small", "large", "tiny", "huge"]
MATERIALS = ["wooden", "metal", "plastic", "glass", "ceramic", "leather", "paper", "stone"]
# surface forms that share one prototype (captions use either)
SYNONYMS = {"large": ["large", "big"], "small": ["small", "little"], "gray": ["gray", "grey"]}

# name[/synonym ...]  category  palette  sized(y/n)  materials(comma list or -)
_OBJECT_TABLE = """
cup tableware any y ceramic,plastic,paper,glass
mug tableware any n ceramic,metal
plate tableware any y ceramic,plastic,paper
bowl tableware any y ceramic,wooden,plastic,glass
knife tool none y metal,plastic
spoon tableware none n metal,wooden,plastic
pan cookware any y metal
pot cookware any y metal,ceramic
stove appliance any n metal
oven appliance any n metal
refrigerator/fridge appliance any y metal
sink fixture any y metal,ceramic,stone
kettle cookware any n metal,glass,plastic
toaster appliance any n metal
banana food none y -
apple food plant y -
bread food none y -
cutting_board cookware none y wooden,plastic
car vehicle vehicle y -
bus vehicle vehicle y -
truck vehicle vehicle y -
bicycle/bike vehicle vehicle y metal
motorcycle vehicle vehicle y -
traffic_light street_thing none n metal
stop_sign street_thing none y metal
bench furniture any y wooden,metal,stone
building structure any y stone,glass
lamp_post street_thing any y metal
umbrella accessory any y -
dog animal animal y -
fire_hydrant street_thing any n metal
taxi vehicle vehicle n -
backpack bag any y leather
tree plant none y -
surfboard sports any y plastic,wooden
towel textile any y -
sandcastle structure none y -
boat vehicle vehicle y wooden,metal
kite toy any y paper,plastic
ball toy any y plastic,leather
beach_chair furniture any n wooden,plastic,metal
bucket container any y plastic,metal
shell nature any y -
bird animal any y -
sunglasses accessory any n plastic,metal
cooler container any y plastic
palm_tree plant none y -
frisbee toy any n plastic
fountain structure none y stone,metal
swing playground any n wooden,metal
slide playground any y plastic,metal
flower plant flower y -
squirrel animal animal y -
picnic_table furniture any y wooden,metal
trash_can container any y metal,plastic
stroller vehicle any n -
desk furniture any y wooden,metal,glass
chair furniture any y wooden,metal,plastic,leather
computer electronics any y -
laptop electronics any y -
keyboard electronics any n plastic
monitor electronics any y -
phone electronics any n -
printer electronics any y -
lamp decor any y metal,glass,ceramic
book paper any y -
notebook paper any y -
pen tool any n plastic,metal
clock decor any y wooden,metal,plastic
potted_plant plant none y ceramic,plastic
folder paper any n plastic,paper
whiteboard structure none y -
couch/sofa furniture any y leather
television/tv electronics any y -
table furniture any y wooden,metal,glass,stone
rug textile any y -
pillow textile any y -
cat animal animal y -
remote electronics any n plastic
vase decor any y glass,ceramic
curtain textile any n -
bookshelf furniture any y wooden,metal
fireplace structure none y stone
cow animal animal y -
horse animal animal y -
sheep animal animal y -
pig animal animal y -
chicken animal animal y -
goat animal animal y -
tractor vehicle vehicle y -
barn structure any y wooden
fence structure any n wooden,metal
hay_bale plant none y -
wagon vehicle any y wooden
windmill structure any y wooden,metal
snowboard sports any n -
sled sports any y wooden,plastic
snowman structure none y -
ski_lift structure any n metal
helmet clothing any n plastic,metal
pine_tree plant none y -
cabin structure any y wooden,stone
mountain nature none y -
flag decor any y -
scarf clothing cloth n -
ski_pole sports any n metal
toilet fixture any n ceramic
mirror decor none y glass
bathtub fixture any y ceramic,metal
shower fixture none n glass,metal
toothbrush tool any n plastic,wooden
soap toiletry any y -
cabinet furniture any y wooden,metal
shelf furniture any y wooden,metal,glass
bottle container any y glass,plastic
basket container any y -
wine_glass tableware none y glass
pizza food none y -
sandwich food none y -
salad food none y -
cake food any y -
menu paper any y paper,leather
candle decor any y -
fork tableware none n metal,plastic
napkin textile any n paper
soccer_goal sports any y metal
baseball_bat sports any n wooden,metal
baseball_glove sports any n leather
tennis_racket sports any n -
net sports any y -
scoreboard structure none y -
cone sports any y plastic
water_bottle container any n plastic,metal
ship vehicle vehicle y metal
sailboat vehicle vehicle y wooden
dock structure none y wooden,stone,metal
rope tool any y -
lighthouse structure any y stone
seagull animal none y -
buoy water_thing any y plastic,metal
crane machine any y metal
anchor tool any y metal
kayak vehicle any n plastic
life_jacket clothing any n -
bed furniture any y wooden,metal
blanket textile any y -
nightstand furniture any y wooden
alarm_clock electronics any n plastic,metal
dresser furniture any y wooden
teddy_bear toy animal y -
window structure none y wooden,glass
suitcase bag any y leather,plastic
airplane vehicle vehicle y metal
luggage_cart vehicle any n metal
departure_board electronics none y -
escalator structure none n metal
ticket paper any n paper
gate structure any n metal,glass
"""

# theme: (caption word, places, objects, agents, actions)
THEMES: dict[str, dict] = {
    "kitchen": dict(
        word="kitchen", places=["in a kitchen", "in the kitchen", "on a kitchen counter", "in a home kitchen"],
        objects="cup mug plate bowl knife spoon pan pot stove oven refrigerator sink kettle toaster banana apple "
                "bread cutting_board",
        agents="man woman chef child",
        actions=["cooking dinner", "chopping vegetables", "washing the dishes", "making coffee",
                 "baking cookies", "stirring a soup", "preparing a meal"]),
    "street": dict(
        word="street", places=["on a city street", "on a busy street", "in the city", "at an intersection"],
        objects="car bus truck bicycle motorcycle traffic_light stop_sign bench building lamp_post umbrella dog "
                "fire_hydrant taxi backpack tree",
        agents="man woman boy girl cyclist police_officer",
        actions=["crossing the road", "waiting at the corner", "chatting with a friend", "walking to work",
                 "carrying groceries", "looking at a map", "riding through traffic"]),
    "beach": dict(
        word="beach", places=["at the beach", "on the beach", "on a sandy beach", "by the sea"],
        objects="surfboard umbrella towel sandcastle boat kite ball beach_chair bucket shell bird dog sunglasses "
                "cooler palm_tree",
        agents="man woman surfer child boy girl",
        actions=["riding a wave", "swimming in the ocean", "lying in the sun", "playing in the sand",
                 "walking along the shore", "jumping over the waves", "digging a hole"]),
    "park": dict(
        word="park", places=["in a park", "in the park", "on the grass", "in a green park"],
        objects="bench tree dog frisbee ball kite bicycle fountain swing slide flower bird squirrel picnic_table "
                "trash_can stroller",
        agents="man woman child boy girl jogger",
        actions=["playing catch", "jogging on a path", "having a picnic", "reading in the shade",
                 "feeding the ducks", "running across the lawn", "resting after a walk"]),
    "office": dict(
        word="office", places=["in an office", "at the office", "in a small office", "in a meeting room"],
        objects="desk chair computer laptop keyboard monitor phone printer lamp book notebook pen mug clock "
                "potted_plant folder whiteboard",
        agents="man woman worker businessman",
        actions=["typing an email", "answering calls", "working late", "writing notes",
                 "reading a report", "leading a meeting", "drinking coffee"]),
    "living room": dict(
        word="living room", places=["in a living room", "in the living room", "in a cozy room", "at home"],
        objects="couch television lamp table chair rug pillow cat dog book remote vase clock curtain bookshelf "
                "fireplace",
        agents="man woman child girl boy",
        actions=["watching a movie", "playing video games", "sitting and relaxing", "talking with friends",
                 "taking a nap", "reading a magazine", "folding laundry"]),
    "farm": dict(
        word="farm", places=["on a farm", "in a field", "in the countryside", "on a ranch"],
        objects="cow horse sheep pig chicken goat tractor barn fence hay_bale truck dog bucket wagon windmill",
        agents="farmer man woman boy",
        actions=["feeding the animals", "working in the field", "carrying hay", "herding the cattle",
                 "fixing the roof", "collecting eggs", "planting seeds"]),
    "snow": dict(
        word="snowy slope", places=["on a snowy slope", "in the snow", "at a ski resort", "on a snowy hill"],
        objects="snowboard sled snowman ski_lift helmet pine_tree cabin mountain flag scarf ski_pole dog",
        agents="skier snowboarder man woman child",
        actions=["skiing down a slope", "snowboarding down a hill", "riding the lift", "throwing snowballs",
                 "making a snow angel", "resting in the snow", "climbing the hill"]),
    "bathroom": dict(
        word="bathroom", places=["in a bathroom", "in the bathroom", "in a tiled bathroom", "in a small restroom"],
        objects="toilet sink mirror bathtub shower towel toothbrush soap cabinet shelf rug bottle trash_can "
                "basket",
        agents="man woman child boy",
        actions=["brushing teeth", "washing hands", "taking a bath", "shaving in the morning",
                 "combing hair", "cleaning the tiles", "getting ready"]),
    "restaurant": dict(
        word="restaurant", places=["in a restaurant", "at a restaurant", "in a busy cafe", "at a diner"],
        objects="table chair plate wine_glass pizza sandwich salad cake bottle menu candle fork napkin bowl cup",
        agents="waiter man woman couple family",
        actions=["eating dinner", "ordering food", "serving drinks", "sharing a meal", "drinking wine",
                 "celebrating a birthday", "paying the bill"]),
    "sports field": dict(
        word="sports field", places=["on a sports field", "on a soccer field", "at a baseball game",
                                     "in a stadium"],
        objects="ball soccer_goal baseball_bat baseball_glove helmet tennis_racket net scoreboard cone fence "
                "water_bottle flag bench",
        agents="player boy girl coach athlete man",
        actions=["running to first base", "swinging at a pitch", "catching a pass", "scoring a point",
                 "stretching before the game", "warming up", "jumping for a header"]),
    "harbor": dict(
        word="harbor", places=["at the harbor", "in a harbor", "by the docks", "at a marina"],
        objects="boat ship sailboat dock rope lighthouse seagull buoy crane anchor kayak life_jacket bird flag",
        agents="fisherman sailor man woman child",
        actions=["fishing off the pier", "tying a knot", "unloading crates", "sailing across the bay",
                 "waving from the deck", "mending fishing gear", "watching the ships"]),
    "bedroom": dict(
        word="bedroom", places=["in a bedroom", "in the bedroom", "in a bright bedroom", "in a hotel room"],
        objects="bed pillow blanket nightstand lamp alarm_clock dresser teddy_bear window rug cat book "
                "curtain mirror suitcase",
        agents="woman man girl boy child",
        actions=["sleeping late", "tidying up", "getting dressed", "jumping on the mattress",
                 "packing for a trip", "stretching after waking up", "writing in a diary"]),
    "airport": dict(
        word="airport", places=["at an airport", "at the airport", "in a terminal", "on the runway"],
        objects="airplane suitcase luggage_cart departure_board escalator ticket gate backpack bench "
                "trash_can water_bottle clock window bus",
        agents="traveler pilot man woman family",
        actions=["checking in for a flight", "waiting to board", "rushing to a flight", "napping between flights",
                 "reading the signs", "boarding a plane", "hugging at arrivals"]),
}
GROUP_AGENTS = {"couple", "family"}  # no single outfit to describe
CLOTHES = ["shirt", "jacket", "hat", "dress", "coat", "sweater"]
RELATIONS = ["next to", "beside", "near", "behind", "in front of", "on top of", "close to", "across from"]
_VOWELS = set("aeiou")


@dataclass(frozen=True)
class ObjectWord:
    name: str                 # canonical name (prototype key)
    forms: tuple[str, ...]    # surface forms used in captions
    category: str
    colours: tuple[str, ...]
    sized: bool
    materials: tuple[str, ...]


def _parse_objects() -> dict[str, ObjectWord]:
    out = {}
    for line in _OBJECT_TABLE.strip().splitlines():
        names, cat, palette, sized, mats = line.split()
        forms = tuple(n.replace("_", " ") for n in names.split("/"))
        out[forms[0]] = ObjectWord(forms[0], forms, cat, tuple(PALETTES[palette].split()), sized == "y",
                                   () if mats == "-" else tuple(mats.split(",")))
    return out


OBJECTS = _parse_objects()
for _theme in THEMES.values():  # normalise the theme tables once: names as in OBJECTS, lists not strings
    _theme["objects"] = [o.replace("_", " ") for o in _theme["objects"].split()]
    _theme["agents"] = [a.replace("_", " ") for a in _theme["agents"].split()]
    assert all(o in OBJECTS for o in _theme["objects"]), _theme["objects"]
THEME_NAMES = list(THEMES)


# ---------------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------------
@dataclass
class SceneObject:
    name: str
    attrs: dict[str, str] = field(default_factory=dict)   # kind ("size" | "colour" | "material") -> value


@dataclass
class Scene:
    theme: str
    objects: list[SceneObject]
    agent: str | None = None
    action: str | None = None
    outfit: tuple[str, str] | None = None                   # (colour, clothing)
    near_duplicate_of: int | None = None                    # index (same split) of the scene it copies


def _pick(rng: np.random.Generator, seq):
    """A uniform element of seq (rng.random is several times cheaper than rng.integers per call)."""
    return seq[int(rng.random() * len(seq))]


@functools.lru_cache(maxsize=None)
def _zipf(n: int, skew: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** skew
    return w / w.sum()


def _random_object(rng: np.random.Generator, name: str, k: dict) -> SceneObject:
    word = OBJECTS[name]
    attrs = {}
    if word.sized and rng.random() < k["attr_extra_prob"]:
        attrs["size"] = _pick(rng, SIZES)
    if word.colours:
        attrs["colour"] = _pick(rng, word.colours)
    if word.materials and rng.random() < k["attr_extra_prob"]:
        attrs["material"] = _pick(rng, word.materials)
    return SceneObject(name, attrs)


def _random_scene(rng: np.random.Generator, k: dict) -> Scene:
    theme = THEME_NAMES[rng.choice(len(THEME_NAMES), p=_zipf(len(THEME_NAMES), k["theme_skew"]))]
    t = THEMES[theme]
    n_obj = int(rng.integers(k["min_objects"], k["max_objects"] + 1))
    n_obj = min(n_obj, len(t["objects"]))
    picks = rng.choice(len(t["objects"]), size=n_obj, replace=False, p=_zipf(len(t["objects"]), k["theme_skew"]))
    scene = Scene(theme, [_random_object(rng, t["objects"][i], k) for i in picks])
    if rng.random() < k["action_prob"]:
        scene.agent = _pick(rng, t["agents"])
        scene.action = _pick(rng, t["actions"])
        if scene.agent not in GROUP_AGENTS and rng.random() < k["outfit_prob"]:
            colours = PALETTES["cloth"].split()
            scene.outfit = (_pick(rng, colours), _pick(rng, CLOTHES))
    return scene


def _near_duplicate(rng: np.random.Generator, src: Scene, src_index: int, k: dict) -> Scene:
    """Copy of `src` with exactly one change: one object swapped for another of the theme, or one attribute."""
    objects = [SceneObject(o.name, dict(o.attrs)) for o in src.objects]
    present = {o.name for o in objects}
    j = int(rng.random() * len(objects))
    changeable = [kind for kind, val in objects[j].attrs.items()
                  if len(_attr_choices(objects[j].name, kind)) > 1]
    absent = [o for o in THEMES[src.theme]["objects"] if o not in present]
    if changeable and (not absent or rng.random() < 0.5):
        kind = _pick(rng, changeable)
        choices = [v for v in _attr_choices(objects[j].name, kind) if v != objects[j].attrs[kind]]
        objects[j].attrs[kind] = _pick(rng, choices)
    else:
        objects[j] = _random_object(rng, _pick(rng, absent), k)
    return replace(src, objects=objects, near_duplicate_of=src_index)


def _attr_choices(name: str, kind: str) -> tuple[str, ...]:
    word = OBJECTS[name]
    return {"size": tuple(SIZES), "colour": word.colours, "material": word.materials}[kind]


def _rng(seed: int, dataset: str, split: str, stream: int) -> np.random.Generator:
    # crc32, not hash(): str hashes are salted per process and would break determinism
    key = [int(seed), zlib.crc32(dataset.encode()), zlib.crc32(split.encode()), stream]
    return np.random.default_rng(np.random.SeedSequence(key))


def sample_scenes(dataset: str, split: str, n_images: int, *, seed: int = 0, **knobs) -> list[Scene]:
    """The scenes of one split (what generate_toyscenes draws), including near-duplicate links."""
    k = _knobs(knobs)
    rng = _rng(seed, dataset, split, 0)
    scenes = [_random_scene(rng, k) for _ in range(n_images)]
    n_dup = int(round(k["near_dup_frac"] * n_images))
    if n_dup and n_images >= 2:
        dups = rng.choice(n_images, size=min(n_dup, n_images // 2), replace=False)
        is_dup = np.zeros(n_images, bool)
        is_dup[dups] = True
        for d in np.sort(dups):
            # the source lies in the same block of 1,000 images, so 1K test folds keep their hard negatives
            lo = (d // 1000) * 1000
            hi = min(lo + 1000, n_images)
            cand = np.flatnonzero(~is_dup[lo:hi]) + lo
            if not len(cand):  # a short last block made only of duplicates: take a source anywhere
                cand = np.flatnonzero(~is_dup)
            src = int(_pick(rng, cand))
            scenes[d] = _near_duplicate(rng, scenes[src], src, k)
    return scenes


# ---------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------
def _article(phrase: str) -> str:
    return ("an " if phrase[0] in _VOWELS else "a ") + phrase


def _form(rng, word: str) -> str:
    forms = SYNONYMS.get(word)
    return _pick(rng, forms) if forms else word


def _object_np(rng, obj: SceneObject, k: dict) -> str:
    words = [_form(rng, obj.attrs[kind]) for kind in ("size", "colour", "material")
             if kind in obj.attrs and rng.random() < k["attr_mention_prob"]]
    forms = OBJECTS[obj.name].forms
    words.append(_pick(rng, forms))
    return _article(" ".join(words))


def _agent_np(rng, scene: Scene, k: dict) -> str:
    agent = _article(scene.agent)
    if scene.outfit and rng.random() < k["attr_mention_prob"]:
        colour, cloth = scene.outfit
        agent += (" in " if rng.random() < 0.5 else " wearing ") + _article(f"{_form(rng, colour)} {cloth}")
    return agent


# Templates: (needed objects, needs agent, text). {O1}..{O4} objects, {A} agent, {V} action, {P} place,
# {R} relation, {T} theme word. Short ones first; lengths run from 4 to ~25 words.
TEMPLATES: list[tuple[int, bool, str]] = [
    (1, False, "{O1} {P}."),
    (2, False, "{O1} and {O2}."),
    (2, False, "{O1} {R} {O2}."),
    (1, False, "a close up of {O1}."),
    (0, True, "{A} {V}."),
    (2, False, "there is {O1} {R} {O2} {P}."),
    (0, True, "{A} is {V} {P}."),
    (1, True, "{A} {V} {R} {O1}."),
    (3, False, "{O1} , {O2} and {O3} {P}."),
    (2, False, "a photo of {O1} and {O2} {P}."),
    (2, False, "{P} , {O1} sits {R} {O2}."),
    (1, True, "{A} is {V} while {O1} sits nearby."),
    (2, True, "{A} is {V} {P} , and {O1} can be seen {R} {O2}."),
    (2, True, "in this picture of a {T} there is {O1} {R} {O2} while {A} is {V}."),
    (4, False, "{O1} sits {R} {O2} and {O3} , and in the background you can see {O4}."),
    (3, True, "{A} {V} {P} {R} {O1} , with {O2} and {O3} nearby."),
    (4, True, "{P} we see {O1} , {O2} , {O3} and {O4} , and {A} who is {V}."),
    (3, False, "there are {O1} and {O2} {R} {O3} {P}."),
]
MIN_WORDS, MAX_WORDS = 4, 25


def count_words(caption: str) -> int:
    """Words of a caption: whitespace tokens holding a letter (punctuation tokens do not count)."""
    return sum(any(c.isalpha() for c in tok) for tok in caption.split())


def _caption(rng: np.random.Generator, scene: Scene, k: dict) -> str:
    theme = THEMES[scene.theme]
    for _ in range(50):
        n_obj, needs_agent, text = _pick(rng, TEMPLATES)
        if n_obj > len(scene.objects) or (needs_agent and scene.agent is None):
            continue
        mentioned = [scene.objects[i] for i in rng.permutation(len(scene.objects))[:n_obj]]
        if n_obj and rng.random() < k["hallucination_prob"]:
            present = {o.name for o in scene.objects}
            absent = [o for o in theme["objects"] if o not in present]
            if absent:  # real captions name things the image does not show: swap one mention
                mentioned[int(rng.random() * n_obj)] = _random_object(rng, _pick(rng, absent), k)
        fill = {f"O{i + 1}": _object_np(rng, o, k) for i, o in enumerate(mentioned)}
        fill["P"] = _pick(rng, theme["places"])
        fill["R"] = _pick(rng, RELATIONS)
        fill["T"] = theme["word"]
        if scene.agent is not None:
            fill["A"] = _agent_np(rng, scene, k)
            fill["V"] = scene.action
        caption = text.format(**fill)
        if MIN_WORDS <= count_words(caption) <= MAX_WORDS:
            caption = caption[0].upper() + caption[1:]
            return caption.replace(" .", ".").replace(" ,", ",")
    # unreachable in practice (the 1-object template always fits); kept so the loop cannot fail silently
    return f"{_object_np(rng, scene.objects[0], k).capitalize()} {theme['places'][0]}."


# ---------------------------------------------------------------------------------------------------
# Prototypes and features
# ---------------------------------------------------------------------------------------------------
class World:
    """Word prototypes (unit vectors in the semantic space) and the fixed projections to feature space."""

    def __init__(self, seed: int, sem_dim: int, closeness: float):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x70C5]))

        def unit():
            return _unit(rng.standard_normal(sem_dim))

        # Shared parts first, in a fixed order, so every vector is a fixed function of the seed.
        theme_vec = {t: unit() for t in THEME_NAMES}
        categories = sorted({o.category for o in OBJECTS.values()} | {"person", "action", "clothing"})
        cat_vec = {c: unit() for c in categories}
        family = {f: unit() for f in ("colour", "size", "material")}
        themes_of: dict[str, list[str]] = {}
        for t in THEME_NAMES:
            for o in THEMES[t]["objects"]:
                themes_of.setdefault(o, []).append(t)
        self.proto: dict[str, np.ndarray] = {}
        c = closeness
        for name in sorted(OBJECTS):
            ths = np.mean([theme_vec[t] for t in themes_of.get(name, THEME_NAMES)], axis=0)
            self.proto[name] = _unit(0.6 * c * cat_vec[OBJECTS[name].category] + 0.5 * c * ths + unit())
        for kind, values in (("colour", PALETTES["any"].split()), ("size", SIZES), ("material", MATERIALS)):
            for v in values:
                self.proto[f"{kind}:{v}"] = _unit(0.6 * c * family[kind] + unit())
        agents = sorted({a for t in THEMES.values() for a in t["agents"]})
        for a in agents:
            self.proto[f"agent:{a}"] = _unit(0.8 * c * cat_vec["person"] + unit())
        for t in THEME_NAMES:
            for act in THEMES[t]["actions"]:
                self.proto[f"action:{act}"] = _unit(0.5 * c * theme_vec[t] + 0.4 * c * cat_vec["action"] + unit())
        for cl in CLOTHES:
            self.proto[f"clothing:{cl}"] = _unit(0.6 * c * cat_vec["clothing"] + unit())
        self.theme = theme_vec
        self.sem_dim = sem_dim
        self.seed = int(seed)

    def projection(self, out_dim: int, which: int) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x9E0, which, out_dim]))
        return rng.standard_normal((self.sem_dim, out_dim)).astype(np.float32)

    def object_vec(self, obj: SceneObject, attr_strength: float) -> np.ndarray:
        v = self.proto[obj.name].copy()
        if obj.attrs:
            attrs = sum(self.proto[f"{kind}:{val}"] for kind, val in obj.attrs.items())
            v += (attr_strength / len(obj.attrs)) * attrs
        return v

    def agent_vecs(self, scene: Scene, attr_strength: float) -> list[np.ndarray]:
        if scene.agent is None:
            return []
        person = self.proto[f"agent:{scene.agent}"].copy()
        action = self.proto[f"action:{scene.action}"] + 0.3 * person
        if scene.outfit:
            colour, cloth = scene.outfit
            person += attr_strength * 0.5 * (self.proto[f"colour:{colour}"] + self.proto[f"clothing:{cloth}"])
        return [person, action]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _scene_regions(world: World, scene: Scene, n_regions: int, k: dict, rng: np.random.Generator):
    """(n_regions, sem_dim) region semantics and the clean scene content vector for the global feature."""
    content = [world.object_vec(o, k["attr_strength"]) for o in scene.objects] + world.agent_vecs(scene, k["attr_strength"])
    regions = list(content)
    # big scenes lose nothing; small ones show a second, partial view of some objects (as detectors do)
    for v in content:
        if len(regions) < n_regions - 2 and rng.random() < 0.3:
            regions.append(0.7 * v)
    regions = regions[:n_regions]
    n_bg = n_regions - len(regions)
    theme = world.theme[scene.theme]
    for i in range(n_bg):  # half theme background (walls, grass, sky ...), half empty
        regions.append(k["background_strength"] * theme if i % 2 == 0 else np.zeros(world.sem_dim))
    sem = np.stack(regions)
    sem += rng.standard_normal(sem.shape) * (k["region_noise"] / np.sqrt(world.sem_dim))
    sem *= rng.uniform(0.7, 1.3, size=(n_regions, 1))          # detector confidence / region size
    sem = sem[rng.permutation(n_regions)]
    glob = sum(content) / len(content) + 0.5 * theme
    glob = glob + rng.standard_normal(world.sem_dim) * (k["global_noise"] / np.sqrt(world.sem_dim))
    return sem, glob


def _knobs(knobs: dict) -> dict:
    opts = check_options(knobs)
    return {key: opts[key] for key in KNOBS}


def _write_npy_header(f, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})


def _write_split(folder: Path, dataset: str, split: str, n_images: int, split_no: int, world: World, *,
                 seed: int, n_regions: int, feat_dim: int, global_dim: int, k: dict, chunk: int = 512) -> None:
    scenes = sample_scenes(dataset, split, n_images, seed=seed, **{key: k[key] for key in KNOBS})
    cap_rng = _rng(seed, dataset, split, 1)
    captions = [_caption(cap_rng, s, k) for s in scenes for _ in range(5)]
    (folder / f"{split}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    (folder / f"{split}_ids.txt").write_text("".join(f"{split_no * 1_000_000 + i}\n" for i in range(n_images)))

    feat_rng = _rng(seed, dataset, split, 2)
    proj, gproj = world.projection(feat_dim, 0), world.projection(global_dim, 1)
    globals_ = np.empty((n_images, global_dim), np.float32)
    with open(folder / f"{split}_ims.npy", "wb") as f:
        _write_npy_header(f, (n_images, n_regions, feat_dim))
        for start in range(0, n_images, chunk):  # chunks keep paper-shape generation within memory
            block = scenes[start:start + chunk]
            sems, globs = zip(*(_scene_regions(world, s, n_regions, k, feat_rng) for s in block))
            sem = np.stack(sems).astype(np.float32)                       # (b, R, sem_dim)
            feats = sem @ proj
            feats += feat_rng.standard_normal(feats.shape, dtype=np.float32) * np.float32(k["feature_noise"])
            np.maximum(feats, 0, out=feats)                                 # detector features are >= 0
            f.write(np.ascontiguousarray(feats, dtype="<f4").tobytes())
            g = np.stack(globs).astype(np.float32) @ gproj
            globals_[start:start + len(block)] = np.maximum(g, 0)
    with open(folder / f"{split}_global.npy", "wb") as f:
        _write_npy_header(f, (n_images, global_dim))
        f.write(globals_.astype("<f4").tobytes())


OPTIONS = ("seed", "splits", "n_regions", "feat_dim", "global_dim", *KNOBS)


def check_options(options: dict, source: str = "toyscenes") -> dict:
    """Validate generate_toyscenes keyword arguments; ConfigError naming `source` and the key on a problem.

    Returns the options with knob defaults filled in (splits stay None when absent).
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}'; expected one of {', '.join(OPTIONS)}")
    out = {"seed": 0, "splits": None, "n_regions": N_REGIONS, "feat_dim": 256, "global_dim": 256, **KNOBS, **options}
    splits = out["splits"]
    if splits is not None:
        if not isinstance(splits, dict) or not splits:
            raise ConfigError(f"{source}: key 'splits' = {splits!r}; expected a mapping split name -> number of images")
        for name, n in splits.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigError(f"{source}: key 'splits' has split name {name!r}; expected a plain name like 'train'")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"{source}: key 'splits.{name}' = {n!r}; expected a positive integer (images)")
    for key, lo in (("seed", 0), ("n_regions", 6), ("feat_dim", 1), ("global_dim", 1)):
        val = out[key]
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise ConfigError(f"{source}: key '{key}' = {val!r}; expected an integer >= {lo}")
    for key in KNOBS:
        val = out[key]
        want_int = key in _INT_KNOBS
        if isinstance(val, bool) or not isinstance(val, (int, float)) or (want_int and not float(val).is_integer()):
            raise ConfigError(f"{source}: key '{key}' = {val!r}; expected {'an integer' if want_int else 'a number'}")
        if not np.isfinite(val) or val < 0 or (key in _PROB_KNOBS and val > 1):
            raise ConfigError(f"{source}: key '{key}' = {val}; expected "
                              f"{'a probability in [0, 1]' if key in _PROB_KNOBS else 'a finite value >= 0'}")
        out[key] = int(val) if want_int else float(val)
    if not 1 <= out["min_objects"] <= out["max_objects"]:
        raise ConfigError(f"{source}: keys 'min_objects' = {out['min_objects']}, 'max_objects' = {out['max_objects']}; "
                          f"expected 1 <= min_objects <= max_objects")
    if out["sem_dim"] < 8:
        raise ConfigError(f"{source}: key 'sem_dim' = {out['sem_dim']}; expected >= 8")
    return out


def generate_toyscenes(out_root, dataset: str, *, seed: int = 0, splits: dict[str, int] | None = None,
                       n_regions: int = N_REGIONS, feat_dim: int = 256, global_dim: int = 256, **knobs) -> Path:
    """Write `<out_root>/<dataset>_precomp/` (ims, caps, ids, global for every split) atomically.

    `splits` defaults to DATASETS[dataset]; knobs (see KNOBS) tune difficulty. Paper shape:
    n_regions=36, feat_dim=2048, global_dim=2048. Deterministic: the same arguments give byte-identical
    files (on one platform; BLAS rounding may differ across CPUs). Returns the folder.
    """
    opts = check_options(dict(seed=seed, splits=splits, n_regions=n_regions, feat_dim=feat_dim,
                              global_dim=global_dim, **knobs))
    if opts["splits"] is None:
        if dataset not in DATASETS:
            raise ConfigError(f"toyscenes: dataset '{dataset}' has no default splits; expected one of "
                              f"{', '.join(DATASETS)} or an explicit `splits`")
        opts["splits"] = dict(DATASETS[dataset])
    k = {key: opts[key] for key in KNOBS}
    world = World(seed, k["sem_dim"], k["word_closeness"])

    folder = Path(out_root) / f"{dataset}_precomp"
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for split_no, (split, n) in enumerate(opts["splits"].items()):
            _write_split(tmp, dataset, split, n, split_no, world, seed=seed, n_regions=n_regions,
                         feat_dim=feat_dim, global_dim=global_dim, k=k)
        manifest = {"generator": "itrbench.data.toyscenes", "version": GENERATOR_VERSION, "dataset": dataset,
                    **opts}
        (tmp / "toyscenes.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder
