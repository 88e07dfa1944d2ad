"""Text that every machine has: the built-in sentence set used to measure embedding fidelity, and a
corpus made of the docstrings of Python's standard library (for calibration, recovery
distillation and the ``llmkern distill`` experiment).
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig

# 16 topics x 4 sentences: each sentence's nearest neighbour should be a sentence on its topic,
# which makes nearest-neighbour agreement between two models a meaningful test.
SENTENCES = [
    "The cat curled up on the warm windowsill and fell asleep.",
    "A kitten was napping in a patch of afternoon sunlight.",
    "My neighbour's tabby likes to sleep on top of the fridge.",
    "Cats spend most of the day dozing in quiet corners.",
    "The stock market fell sharply after the interest rate announcement.",
    "Shares dropped across the board when the central bank raised rates.",
    "Investors sold equities as borrowing costs went up.",
    "The index lost three percent in a single trading session.",
    "She baked a loaf of sourdough bread with a crisp crust.",
    "Fresh bread came out of the oven smelling of yeast and flour.",
    "He kneaded the dough for ten minutes before letting it rise.",
    "Homemade rye bread needs a long, slow fermentation.",
    "The football team scored twice in the final ten minutes.",
    "A late goal gave the home side a narrow victory.",
    "The striker headed the ball into the top corner of the net.",
    "Fans celebrated as the match ended two goals to one.",
    "Heavy rain is expected across the region tomorrow morning.",
    "The forecast warns of storms and strong winds this weekend.",
    "Umbrellas will be needed, as showers continue all day.",
    "Meteorologists predict a cold front with thunder and hail.",
    "The program crashed because of a null pointer dereference.",
    "A segmentation fault occurred when the buffer was freed twice.",
    "The bug was traced to reading memory after it had been released.",
    "Debugging the crash revealed an out-of-bounds array access.",
    "The hikers reached the summit just before sunrise.",
    "Climbing the mountain took them most of the night.",
    "From the peak they could see the whole valley below.",
    "The trail to the top was steep, rocky and narrow.",
    "The patient was prescribed antibiotics for the infection.",
    "The doctor recommended rest and plenty of fluids.",
    "A course of penicillin cleared up the bacterial illness.",
    "The nurse checked his temperature and blood pressure.",
    "The train to the airport leaves every fifteen minutes.",
    "Commuters waited on the platform for the delayed express.",
    "The railway line was closed for engineering works.",
    "A high-speed train links the two cities in under an hour.",
    "The orchestra performed a symphony by Beethoven.",
    "The violin soloist received a standing ovation.",
    "Concert-goers listened to a programme of classical music.",
    "The conductor raised his baton and the strings began to play.",
    "Solar panels convert sunlight directly into electricity.",
    "Wind turbines generate power for thousands of homes.",
    "Renewable energy now supplies a third of the grid.",
    "The new battery stores surplus energy from the solar farm.",
    "The children built a sandcastle on the beach.",
    "Waves washed over the shore as the tide came in.",
    "They spent the summer afternoon swimming in the sea.",
    "Seagulls circled above the crowded seaside promenade.",
    "The library extended its opening hours during exams.",
    "Students crowded the reading room to revise for finals.",
    "She borrowed three novels and a history book.",
    "The librarian helped him find an old map in the archive.",
    "The chef seasoned the soup with salt, pepper and thyme.",
    "A pinch of herbs gave the stew a richer flavour.",
    "The recipe calls for garlic, onions and fresh basil.",
    "He tasted the sauce and added a little more lemon.",
    "The rocket lifted off and carried the satellite into orbit.",
    "Astronauts docked with the space station after launch.",
    "The probe sent back images of the surface of Mars.",
    "A new telescope will observe distant galaxies from space.",
    "The company announced record profits for the quarter.",
    "Quarterly revenue grew faster than analysts expected.",
    "The firm's earnings beat forecasts thanks to strong sales.",
    "Management raised its outlook for the full year.",
]
TOPIC_SIZE = 4


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def _docstrings(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                out.append(doc)
    return out


def stdlib_files() -> list[str]:
    """The standard library's .py files (tests and site-packages excluded), sorted."""
    root = _stdlib_dir()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in ("site-packages", "test", "tests", "idlelib", "__pycache__")
        )
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return files


def docstring_corpus(split: str = "all", held_out_every: int = 10) -> list[str]:
    """Paragraphs of the standard library's docstrings. Files are split deterministically:
    every ``held_out_every``-th file is ``"test"``, the others ``"train"``."""
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be all, train or test, got {split!r}")
    paragraphs = []
    for i, path in enumerate(stdlib_files()):
        is_test = i % held_out_every == held_out_every - 1
        if split == "train" and is_test or split == "test" and not is_test:
            continue
        for doc in _docstrings(path):
            for para in re.split(r"\n\s*\n", doc):
                text = " ".join(para.split())
                if len(text) >= 20 and not text.startswith(">>>"):
                    paragraphs.append(text)
    if not paragraphs:
        raise RuntimeError(f"no docstrings found under the standard library at {_stdlib_dir()}")
    return paragraphs


def sentences_from(paragraphs: list[str], min_words: int = 5, max_words: int = 40) -> list[str]:
    """Split paragraphs into sentences of a useful length."""
    out = []
    for p in paragraphs:
        for s in re.split(r"(?<=[.!?])\s+", p):
            if min_words <= len(s.split()) <= max_words:
                out.append(s)
    return out


# Everyday English for distillation, generated from templates: the docstrings are technical
# prose, and a model distilled on them alone recovers more slowly on ordinary sentences.
_PEOPLE = ["my sister", "the old man", "a young teacher", "our neighbours", "the tourists", "her friend",
           "the workers", "a little boy", "the students", "his parents", "the driver", "a stranger",
           "the manager", "two girls", "the farmer", "everyone in town"]  # fmt: skip
_VERBS = ["found", "bought", "painted", "repaired", "sold", "carried", "lost", "opened", "cleaned",
          "borrowed", "wrapped", "watched", "forgot", "described", "ordered", "moved"]  # fmt: skip
_THINGS = ["a blue umbrella", "the wooden chair", "an old photograph", "a heavy box", "the garden gate",
           "a pair of shoes", "the kitchen table", "a small boat", "a birthday card", "the red bicycle",
           "a basket of apples", "the front door", "a warm coat", "a new lamp", "the broken clock",
           "a bag of rice"]  # fmt: skip
_PLACES = ["near the river", "at the market", "in the attic", "behind the school", "on the bridge",
           "in the village", "at the station", "by the lake", "in the hospital", "outside the bakery",
           "in the park", "at the office", "on the farm", "in the museum", "at the harbour",
           "in the forest"]  # fmt: skip
_TIMES = ["yesterday", "last winter", "this morning", "after dinner", "on Sunday", "before the storm",
          "during the holidays", "at midnight", "every spring", "a week ago", "late in the evening",
          "on her birthday"]  # fmt: skip
_FEELINGS = ["happy", "tired", "surprised", "worried", "proud", "curious", "angry", "calm", "nervous",
             "grateful"]  # fmt: skip
_TEMPLATES = [
    "{P} {V} {T} {L} {W}.",
    "{W}, {P} {V} {T} {L}.",
    "{P} felt {F} because someone {V} {T} {L}.",
    "Did {p} really say that {q} {V} {T}?",
    "{P} felt {F} when {q} {V} {T} {L}.",
    "Nobody knew why {p} {V} {T} {L} {W}.",
]


def everyday_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` simple English sentences about people, things, places and times (templates)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p, q = rng.sample(_PEOPLE, 2)
        s = rng.choice(_TEMPLATES).format(
            P=p[0].upper() + p[1:], p=p, q=q, V=rng.choice(_VERBS), T=rng.choice(_THINGS),
            L=rng.choice(_PLACES), W=rng.choice(_TIMES), F=rng.choice(_FEELINGS),
        )  # fmt: skip
        out.append(s[0].upper() + s[1:])
    return out
