"""A real-text corpus built at run time from installed software: the docstrings of the Python
standard library (nobody here wrote them), one document per documented function, class or
method, titled with its qualified name (`json.dumps`), tagged with its module.

Deterministic for one Python version: modules, members and the query sampling are in a fixed
order with a fixed seed. The docstrings change between Python versions, so results record it.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass

MODULES = [
    "abc",
    "argparse",
    "array",
    "ast",
    "asyncio.base_events",
    "asyncio.locks",
    "asyncio.queues",
    "asyncio.streams",
    "asyncio.tasks",
    "base64",
    "binascii",
    "bisect",
    "bz2",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "colorsys",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "email.message",
    "email.utils",
    "enum",
    "filecmp",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "gc",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "html.parser",
    "http.client",
    "http.cookies",
    "imaplib",
    "importlib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "json.decoder",
    "json.encoder",
    "locale",
    "logging",
    "logging.handlers",
    "lzma",
    "mailbox",
    "mimetypes",
    "operator",
    "os",
    "os.path",
    "pathlib",
    "pickle",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "queue",
    "quopri",
    "random",
    "re",
    "reprlib",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "ssl",
    "stat",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "sysconfig",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "tomllib",
    "trace",
    "traceback",
    "types",
    "typing",
    "unicodedata",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
    "zlib",
    "zoneinfo",
]
MIN_WORDS = 12
MAX_BODY_WORDS = 400

STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "may",
        "me",
        "more",
        "most",
        "must",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "use",
        "used",
        "using",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "also",
        "none",
        "true",
        "false",
        "return",
        "returns",
        "default",
        "object",
        "value",
        "values",
        "given",
        "argument",
        "arguments",
    ]
)
WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True, slots=True)
class CorpusDoc:
    key: str  # the qualified name, unique
    title: str
    body: str
    collection: str
    tags: tuple[str, ...]


def _members(module: object) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for name, value in sorted(vars(module).items()):
        if name.startswith("_"):
            continue
        if inspect.isclass(value) or inspect.isroutine(value):
            if getattr(value, "__module__", None) != getattr(module, "__name__", None):
                continue
            out.append((name, value))
            if inspect.isclass(value):
                for mname, member in sorted(vars(value).items()):
                    if not mname.startswith("_") and inspect.isroutine(member):
                        out.append((f"{name}.{mname}", member))
    return out


def build_corpus() -> list[CorpusDoc]:
    """Every documented public function, class and method of MODULES, one document each."""
    docs: dict[str, CorpusDoc] = {}
    bodies: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            for name, value in _members(module):
                doc = inspect.getdoc(value) or ""
                words = doc.split()
                if len(words) < MIN_WORDS:
                    continue
                body = " ".join(words[:MAX_BODY_WORDS])
                if body in bodies:  # inherited or shared docstrings: keep the first
                    continue
                bodies.add(body)
                key = f"{module_name}.{name}"
                docs[key] = CorpusDoc(
                    key=key,
                    title=key,
                    body=body,
                    collection=module_name.split(".")[0],
                    tags=(module_name,),
                )
    return list(docs.values())


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    expected: str  # the key of the document it was made from


QUERY_SETS = ("sentences", "keywords", "inflected", "absent_word")


def _content_words(text: str) -> list[str]:
    return [w for w in WORD.findall(text) if len(w) >= 4 and w.lower() not in STOPWORDS]


def _inflections(word: str) -> list[str]:
    """English inflections by spelling rules alone (not the stemmer): plurals, -ed, -ing."""
    w = word.lower()
    out = []
    if w.endswith("ies"):
        out.append(w[:-3] + "y")
    if w.endswith("es"):
        out.append(w[:-2])
    if w.endswith("s") and not w.endswith("ss"):
        out.append(w[:-1])
    if w.endswith("ed"):
        out += [w[:-2], w[:-1]]
    if w.endswith("ing"):
        out += [w[:-3], w[:-3] + "e"]
    if w.endswith("y"):
        out += [w[:-1] + "ies", w[:-1] + "ied"]
    if w.endswith("e"):
        out += [w + "s", w + "d", w[:-1] + "ing"]
    if not w.endswith(("s", "e", "y")):
        out += [w + "s", w + "es", w + "ed", w + "ing"]
    return [o for o in out if len(o) >= 3 and o != w]


def build_queries(
    corpus: list[CorpusDoc], per_set: int = 200, seed: int = 15
) -> dict[str, list[Query]]:
    """Four query sets with known answers, sampled from the corpus with a fixed seed:
    `sentences` (the first sentence, up to 12 words), `keywords` (2-4 content words of the
    document), `inflected` (the same with one word in another inflected form that occurs in
    the corpus but not in that document), `absent_word` (keywords plus one corpus word that is
    not in the document)."""
    rng = random.Random(seed)
    vocabulary = Counter(w.lower() for d in corpus for w in WORD.findall(f"{d.title} {d.body}"))
    common = sorted(w for w, n in vocabulary.items() if n >= 5 and len(w) >= 4)
    sample = rng.sample(corpus, min(len(corpus), per_set * 2))
    sets: dict[str, list[Query]] = {name: [] for name in QUERY_SETS}
    for doc in sample:
        text = f"{doc.title} {doc.body}"
        present = {w.lower() for w in WORD.findall(text)}
        first = re.split(r"(?<=[.!?])\s", doc.body, maxsplit=1)[0]
        sentence = " ".join(first.split()[:12])
        if len(sentence.split()) >= 4 and len(sets["sentences"]) < per_set:
            sets["sentences"].append(Query(sentence, doc.key))
        content = list(dict.fromkeys(w.lower() for w in _content_words(doc.body)))
        if len(content) < 4:
            continue
        keywords = rng.sample(content, rng.randint(2, min(4, len(content))))
        if len(sets["keywords"]) < per_set:
            sets["keywords"].append(Query(" ".join(keywords), doc.key))
        order = list(range(len(keywords)))
        rng.shuffle(order)
        for i in order:
            forms = [f for f in _inflections(keywords[i]) if f in vocabulary and f not in present]
            if forms and len(sets["inflected"]) < per_set:
                inflected = [*keywords]
                inflected[i] = forms[0]
                sets["inflected"].append(Query(" ".join(inflected), doc.key))
                break
        if len(sets["absent_word"]) < per_set:
            absent = rng.choice(common)
            while absent in present:
                absent = rng.choice(common)
            words = [*keywords]
            words.insert(rng.randrange(len(words) + 1), absent)
            sets["absent_word"].append(Query(" ".join(words), doc.key))
    return sets
