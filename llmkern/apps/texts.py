"""Text available offline: the built-in sentence set used to measure embedding fidelity, a
corpus made of the docstrings of Python's standard library (every machine has it: calibration,
recovery distillation and the ``llmkern distill`` experiment), and a news corpus shipped by a
PyPI package (recovery distillation).
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


NEWS_PACKAGE = "gensim"


def news_corpus() -> list[str]:
    """The Lee background corpus: 300 Australian Broadcasting Corporation news articles, one per
    line (Lee, Pincombe & Welsh, 2005), as the PyPI package gensim ships it (its tutorials' corpus,
    ``gensim.test.utils.datapath("lee_background.cor")``). Read from gensim's folder without
    importing gensim. Everyday English on many topics, where the docstrings are technical."""
    import importlib.util

    spec = importlib.util.find_spec(NEWS_PACKAGE)
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(
            list(spec.submodule_search_locations)[0], "test", "test_data", "lee_background.cor"
        )
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(
            f"the news corpus comes with the package {NEWS_PACKAGE}: pip install 'llmkern[models]'"
        )
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if line.strip()]
