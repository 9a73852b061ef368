"""The offline model: the same vectors as WordLlama's own inference, from files inside the
installed package, with no network and without running the package's code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from capstan.embeddings.port import EmbeddingError
from capstan.embeddings.static import MODEL, StaticEmbedder

TEXTS = ["The quick brown fox.", "naïve café 日本語", "x", "a " * 300]

# WordLlama's own inference on the same files, as its loader builds it (its `WordLlama.load`
# looks for the tokenizer under tokenizer/, not the tokenizers/ its wheel ships, and would go to
# the model hub for it). In a child process: importing wordllama configures the root logger.
REFERENCE = """
import json, pathlib, sys
from safetensors import safe_open
from tokenizers import Tokenizer
import wordllama
from wordllama.inference import WordLlamaInference
root = pathlib.Path(wordllama.__file__).parent
with safe_open(str(root / "weights/l2_supercat_256.safetensors"), framework="np") as f:
    table = f.get_tensor("embedding.weight")
tokenizer = Tokenizer.from_file(str(root / "tokenizers/l2_supercat_tokenizer_config.json"))
wl = WordLlamaInference(table, tokenizer)
print(json.dumps(wl.embed(json.loads(sys.argv[1]), norm=True).tolist()))
"""

# Every way out to the network fails in this child; the model must still load and embed.
OFFLINE = """
import asyncio, json, socket, sys
def refuse(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from capstan.embeddings.static import StaticEmbedder
model = StaticEmbedder.load()
vectors = asyncio.run(model.embed(json.loads(sys.argv[1])))
print(json.dumps({"n": len(vectors), "wordllama_imported": "wordllama" in sys.modules}))
"""


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_vectors_equal_wordllamas_own(offline: StaticEmbedder) -> None:
    reference = json.loads(_run(REFERENCE))
    ours = await offline.embed(TEXTS)
    for got, want in zip(ours, reference, strict=True):
        assert got == pytest.approx(want, abs=1e-5)


def test_it_loads_and_embeds_with_the_network_cut_off() -> None:
    assert json.loads(_run(OFFLINE)) == {"n": len(TEXTS), "wordllama_imported": False}


def test_identity_is_the_model_and_a_digest_of_its_files(offline: StaticEmbedder) -> None:
    again = StaticEmbedder.load()
    assert (offline.model, offline.dimension) == (MODEL, 256)
    assert len(offline.version) == 16 and offline.version == again.version


def test_missing_files_say_how_to_reinstall(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingError, match=r"missing from the installed .* reinstall"):
        StaticEmbedder.load(tmp_path)


def test_token_counts_use_the_models_tokenizer(offline: StaticEmbedder) -> None:
    assert offline.count_tokens("hello") >= 1
    assert offline.count_tokens("hello world " * 50) > offline.count_tokens("hello world")
