"""Real tokenizers and chat templates of released model families, for tests (issue 19).

llama.cpp ships vocab-only GGUF files of released models (the vocabulary, merges and special
token ids, no weights) and a collection of released chat templates; both come inside
llama-cpp-python's source distribution on PyPI. This module downloads that sdist once with pip
(pinned version, sha256 checked), extracts only the files the families below need, builds each
family's tokenizer with ``transformers`` (``from_pretrained(dir, gguf_file=...)``), sets the
released model's special tokens and chat template, and saves it as an ordinary tokenizer
directory. Everything is cached under ``$TETHER_TEST_FIXTURES`` (default
``~/.cache/tether-test-fixtures``), so only the first session pays for the download (~77 MB).

A GGUF carries the vocabulary but not every setting of the released ``tokenizer.json``; where
the released file differs, ``Family.reshape`` puts it back (each edit says which fact it
restores). ``tests/data/test_real_tokenizers.py`` checks every family against llama.cpp's own
reference tokenizations, which were made with the released tokenizers.

Offline, the tests that need these files are skipped with the reason; with ``CI=true`` they
fail instead, so CI cannot pass without running them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tether.model.loading import load_tokenizer

SDIST = "llama_cpp_python-0.3.36.tar.gz"
REQUIREMENT = "llama-cpp-python==0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MODELS = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
# Bump when a Family's recipe changes, so cached tokenizers built by the old recipe are not used.
RECIPE = "r1"


def _no_change(data: dict[str, Any]) -> None:
    """The GGUF already builds the released tokenizer."""


def _sentencepiece_normalizer(data: dict[str, Any]) -> None:
    """Llama 2's released tokenizer.json marks word starts with a normalizer (prepend '▁' to the
    text, spaces -> '▁') and has no pre-tokenizer; transformers' GGUF loader builds a Metaspace
    pre-tokenizer instead, which differs on text that starts with a space (' Hello' gives
    '▁', '▁Hello' in the released tokenizer)."""
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    data["pre_tokenizer"] = None


def _rename(data: dict[str, Any], names: dict[int, tuple[str, bool]], size: int) -> None:
    """Give added tokens their released names and special flags; drop ids >= ``size`` (padding
    rows of the embedding that the released tokenizer does not have)."""
    vocab = data["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    for i, (name, _) in names.items():
        vocab[name] = vocab.pop(by_id[i])
    for t, i in list(vocab.items()):
        if i >= size:
            del vocab[t]
    kept = []
    for tok in data["added_tokens"]:
        if tok["id"] in names:
            tok["content"], tok["special"] = names[tok["id"]]
        if tok["id"] < size:
            kept.append(tok)
    data["added_tokens"] = kept


def _llama31(data: dict[str, Any]) -> None:
    """Llama 3.1 Instruct: the vocabulary file is Llama 3's (same 128,256 ids); 3.1 renamed
    three reserved tokens. Its BPE uses a whole pre-token when the vocabulary has it
    (``ignore_merges``; ' Việt' is one token), and BOS is added by the post-processor."""
    _rename(data, {128004: ("<|finetune_right_pad_id|>", True), 128008: ("<|eom_id|>", True),
                   128010: ("<|python_tag|>", True)}, 128256)
    data["model"]["ignore_merges"] = True
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                 "tokens": ["<|begin_of_text|>"]}},
    }


# The vocabulary file is Qwen 2's: 151,643 byte-level tokens, <|endoftext|> <|im_start|>
# <|im_end|>, then placeholders. Qwen 2.5 named the next 19 ids, Qwen 3 four more.
_QWEN25 = {
    151646: ("<|object_ref_start|>", True), 151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True), 151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True), 151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True), 151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True), 151655: ("<|image_pad|>", True),
    151656: ("<|video_pad|>", True), 151657: ("<tool_call>", False),
    151658: ("</tool_call>", False), 151659: ("<|fim_prefix|>", False),
    151660: ("<|fim_middle|>", False), 151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False), 151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
}
_QWEN3 = {
    **_QWEN25,
    151665: ("<tool_response>", False), 151666: ("</tool_response>", False),
    151667: ("<think>", False), 151668: ("</think>", False),
}


def _qwen25(data: dict[str, Any]) -> None:
    """Qwen 2.5 Instruct's added tokens (151,665 ids in all)."""
    _rename(data, _QWEN25, 151665)


def _qwen3(data: dict[str, Any]) -> None:
    """Qwen 3's added tokens (151,669 ids in all); <think> and </think> are single tokens."""
    _rename(data, _QWEN3, 151669)


@dataclass(frozen=True)
class Family:
    """One released model's tokenizer: its vocabulary file, chat template and special tokens."""

    name: str
    gguf: str  # vocab-only file in llama.cpp's models/
    eos: str
    bos: str | None = None
    pad: str | None = None
    template: str | None = None  # file in models/templates/, None: the model has no template
    reshape: Callable[[dict[str, Any]], None] = field(default=_no_change)


FAMILIES = {
    f.name: f
    for f in [
        # Llama 2 as released: SentencePiece, '▁' word starts, BOS added, no chat template.
        Family("llama2", "ggml-vocab-llama-spm.gguf", "</s>", "<s>", None, None,
               _sentencepiece_normalizer),
        # The same vocabulary as transformers' own GGUF loader builds it (a Metaspace
        # pre-tokenizer, not Llama 2's normalizer): what loading a Llama 2 GGUF gives a user.
        Family("llama2-metaspace", "ggml-vocab-llama-spm.gguf", "</s>", "<s>"),
        Family("llama3.1-instruct", "ggml-vocab-llama-bpe.gguf", "<|eot_id|>",
               "<|begin_of_text|>", None, "meta-llama-Llama-3.1-8B-Instruct.jinja", _llama31),
        Family("qwen2.5-instruct", "ggml-vocab-qwen2.gguf", "<|im_end|>", None, "<|endoftext|>",
               "Qwen-Qwen2.5-7B-Instruct.jinja", _qwen25),
        Family("qwen3", "ggml-vocab-qwen2.gguf", "<|im_end|>", None, "<|endoftext|>",
               "Qwen-Qwen3-0.6B.jinja", _qwen3),
        Family("phi3.5-mini-instruct", "ggml-vocab-phi-3.gguf", "<|endoftext|>", "<s>",
               "<|endoftext|>", "microsoft-Phi-3.5-mini-instruct.jinja"),
        Family("gpt2", "ggml-vocab-gpt-2.gguf", "<|endoftext|>", "<|endoftext|>"),
        Family("gemma4-it", "ggml-vocab-gemma-4.gguf", "<eos>", "<bos>", "<pad>",
               "google-gemma-4-31B-it.jinja"),
    ]
}


# Released templates tested on their own (rendering, errors, what is scored), with a family's
# tokenizer standing in for theirs: Gemma 2 refuses system messages; gpt-oss (harmony format)
# has reasoning channels; LFM2.5 marks assistant turns with {% generation %}.
EXTRA_TEMPLATES = ("google-gemma-2-2b-it.jinja", "openai-gpt-oss-120b.jinja",
                   "LFM2.5-8B-A1B.jinja")


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail under CI=true, where these tests must run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true, so the real-tokenizer tests may not be skipped")
    pytest.skip(reason)


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "tether-test-fixtures"
    return Path(os.environ.get("TETHER_TEST_FIXTURES") or default).expanduser()


def _members() -> list[str]:
    """The sdist members the families need: vocab files, llama.cpp's reference tokenizations
    of its test texts (.inp/.out, made with the released tokenizers) and templates."""
    names = set()
    for f in FAMILIES.values():
        names |= {f.gguf, f.gguf + ".inp", f.gguf + ".out"}
        if f.template:
            names.add("templates/" + f.template)
    names |= {"templates/" + t for t in EXTRA_TEMPLATES}
    return sorted(names)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(into: Path) -> Path:
    """The pinned sdist, through pip (so a configured index or mirror is used)."""
    # Few retries and a short timeout: offline, the skip should come in seconds, not minutes.
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--retries", "1",
           "--timeout", "30", "--no-binary", "llama-cpp-python", REQUIREMENT, "-d", str(into)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        unavailable(f"pip download {REQUIREMENT} timed out after 900 s")
    sdist = into / SDIST
    if done.returncode != 0 or not sdist.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        unavailable(f"cannot download {REQUIREMENT} for the real-tokenizer tests ({last}); "
                    f"or put {SDIST} in {cache_dir()}")
    return sdist


def models_dir() -> Path:
    """llama.cpp's models/ folder with the files the families need, extracted once."""
    key = hashlib.sha256("\n".join(_members()).encode()).hexdigest()[:12]
    out = cache_dir() / f"llama.cpp-models-{SDIST_SHA256[:12]}-{key}"
    if out.is_dir():
        return out
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        sdist = cache_dir() / SDIST
        if not sdist.is_file():
            sdist = _download(Path(tmp))
        got = _sha256(sdist)
        if got != SDIST_SHA256:  # not a skip: a changed file must be looked at, not ignored
            raise AssertionError(f"{sdist}: sha256 {got}, expected {SDIST_SHA256}")
        staging = Path(tmp) / "models"
        with tarfile.open(sdist) as tar:
            for name in _members():
                member = tar.getmember(MODELS + name)
                src = tar.extractfile(member)
                assert src is not None, f"{member.name} is not a file"
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(src.read())
        _publish(staging, out)
    return out


def _publish(staging: Path, out: Path) -> None:
    """Rename into place (atomic: a half-written folder is never seen as done); a session that
    lost the race to another uses the winner's copy."""
    try:
        staging.rename(out)
    except OSError:
        if not out.is_dir():
            raise


def tokenizer_dir(name: str) -> Path:
    """A saved tokenizer directory (tokenizer.json, tokenizer_config.json, chat template)."""
    import transformers

    out = cache_dir() / f"tokenizers-{RECIPE}-transformers-{transformers.__version__}" / name
    if out.is_dir():
        return out
    try:
        import gguf  # noqa: F401  transformers reads GGUF files with it
    except ImportError:
        unavailable("the real-tokenizer tests need the gguf package (pip install gguf)")
    models = models_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        _build(models, FAMILIES[name], Path(tmp) / name)
        _publish(Path(tmp) / name, out)
    return out


def _build(models: Path, fam: Family, out: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    # PreTrainedTokenizerFast rather than AutoTokenizer: the latter also builds a model config
    # from the file, which fails for Gemma 4's per-layer head counts; the tokenizer is the same.
    loaded = PreTrainedTokenizerFast.from_pretrained(str(models), gguf_file=fam.gguf)
    data = json.loads(loaded.backend_tokenizer.to_str())
    fam.reshape(data)
    template = (models / "templates" / fam.template).read_text() if fam.template else None
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token=fam.bos,
        eos_token=fam.eos, pad_token=fam.pad, unk_token=loaded.unk_token, chat_template=template,
    )
    tok.save_pretrained(out)


def reference_cases(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test texts for this family's vocabulary with the released tokenizer's ids."""
    models = models_dir()
    gguf_file = FAMILIES[name].gguf
    texts = (models / (gguf_file + ".inp")).read_text(encoding="utf-8")
    ids = (models / (gguf_file + ".out")).read_text(encoding="utf-8")
    sep = "\n__ggml_vocab_test__\n"  # llama.cpp's format: texts between separators, ids a line
    cases = texts.removesuffix(sep).split(sep)
    return [(t, [int(x) for x in line.split()])
            for t, line in zip(cases, ids.splitlines(), strict=True)]


def template_text(name: str) -> str:
    """A released chat template from llama.cpp's collection (``EXTRA_TEMPLATES`` or a family's)."""
    return (models_dir() / "templates" / name).read_text(encoding="utf-8")


# Fixtures for the test modules that import them (a tests/data/conftest.py would shadow the
# root conftest that those modules import helpers from).
@pytest.fixture(scope="session")
def real_dirs() -> dict[str, Path]:
    # Download and build everything once, here: a skip (offline) is then one skip per session.
    return {name: tokenizer_dir(name) for name in FAMILIES}


@pytest.fixture(scope="session")
def real(real_dirs: dict[str, Path]) -> Callable[[str], Any]:
    loaded: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in loaded:  # through tether's own loader, as a run would
            loaded[name] = load_tokenizer(str(real_dirs[name]))
        return loaded[name]

    return get


def all_templates() -> dict[str, str]:
    """Every released chat template in llama.cpp's collection, by file name (extracted once
    from the pinned sdist, which ``models_dir`` has already checked)."""
    out = cache_dir() / f"llama.cpp-templates-{SDIST_SHA256[:12]}"
    if not out.is_dir():
        cache_dir().mkdir(parents=True, exist_ok=True)
        sdist = cache_dir() / SDIST
        if not sdist.is_file():
            sdist = _download(cache_dir())
        got = _sha256(sdist)
        if got != SDIST_SHA256:
            raise AssertionError(f"{sdist}: sha256 {got}, expected {SDIST_SHA256}")
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            staging = Path(tmp) / "templates"
            staging.mkdir()
            with tarfile.open(sdist) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.startswith(MODELS + "templates/"):
                        src = tar.extractfile(member)
                        assert src is not None
                        (staging / Path(member.name).name).write_bytes(src.read())
            _publish(staging, out)
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(out.glob("*.jinja"))}
