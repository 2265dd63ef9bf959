"""Corpus sources, the built-in essay generator, and the tokenized-corpus cache."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from niah.errors import NiahError
from niah.prompts import essays
from niah.prompts.corpus import NOISE_SENTENCES, get_corpus, normalize
from niah.prompts.corpus_tokens import TokenizedCorpus, cache_path, measure_units, tokenized
from niah.prompts.tokenizers import get_tokenizer


def sentences(corpus) -> list[str]:
    starts = corpus.unit_starts.tolist()
    return [corpus.text[a:b].strip() for a, b in itertools.pairwise(starts)]


def test_builtin_is_long_enough_and_never_repeats_a_sentence_run(builtin):
    assert tokenized(builtin, get_tokenizer("qwen3.6")).total >= 1_200_000
    units = sentences(builtin)
    windows = list(zip(units, units[1:], units[2:]))
    assert len(set(windows)) == len(windows)
    assert len(set(units)) == len(units)


def test_builtin_reads_as_essay_paragraphs_with_ordinary_numbers_but_no_needle_words(builtin):
    text = builtin.text
    units = sentences(builtin)
    with_digits = [u for u in units if re.search(r"\d", u)]
    assert 0.1 < len(with_digits) / len(units) < 0.3  # a needle is not the only sentence with digits
    assert re.search(r"\b(January|March|October) \d{1,2}, 1[89]\d\d\b", text)  # dates
    assert re.search(r"\b\d{1,2},\d{3}\b", text) and re.search(r"\b\d{1,2} percent\b", text)
    # never a 7-digit value, not even one an answer scorer would read through a separator ("4,827,193")
    assert not re.search(r"\d(?:[\s,.'\u2019_\u00a0\u202f-]?\d){6}", text)
    assert not re.search(r"magic|special|number", text, re.IGNORECASE)
    assert builtin.about == essays.ABOUT and "numbers and dates" in builtin.about
    paragraphs = text.split("\n\n")[:-1]
    assert len(paragraphs) > 10_000 and all(p and p == p.strip() for p in paragraphs)
    for paragraph in paragraphs[:500]:
        parts = re.split(r"(?<=[.?!]) ", paragraph)
        assert len(parts) >= 3 and all(p[0].isupper() and p[-1] in ".?!" for p in parts)
    assert not re.search(r"\b[Aa] [aeio]", text)  # articles agree


def test_builtin_is_deterministic_and_seeded():
    first = essays.generate(chars=20_000)
    assert first == essays.generate(chars=20_000)
    assert first != essays.generate(seed=1, chars=20_000)
    assert first.endswith("\n\n") and len(first) >= 20_000


def test_corpus_hash_follows_content(tmp_path):
    (tmp_path / "a.txt").write_text("One sentence here.  Another\nline.\r\n\r\n\r\nNext paragraph.")
    corpus = get_corpus(f"files:{tmp_path}/*.txt")
    assert corpus.text == "One sentence here. Another line.\n\nNext paragraph.\n\n"
    (tmp_path / "a.txt").write_text("Changed text.")
    assert get_corpus(f"files:{tmp_path}/*.txt").sha256 != corpus.sha256
    assert get_corpus("noise").sha256 != corpus.sha256


def test_noise_is_ruler_filler():
    noise = get_corpus("noise")
    assert noise.text.startswith(" ".join(NOISE_SENTENCES))
    assert sentences(noise)[:5] == list(NOISE_SENTENCES)


@pytest.mark.parametrize("spec, message", [
    ("wiki", "unknown corpus"), ("files:", "unknown corpus"), ("files:/nonexistent-niah/*", "matches no files"),
])
def test_bad_corpus_specs(spec, message):
    with pytest.raises(NiahError, match=message):
        get_corpus(spec)


def test_files_without_text_are_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(NiahError, match="holds no text"):
        get_corpus(f"files:{tmp_path}/*.txt")


def test_unit_boundaries_follow_sentences_and_paragraphs():
    text = normalize('He said "Stop." Then left! Why? Because.\n\nNew para. End.')
    corpus = get_corpus("noise").__class__("test", text)
    assert sentences(corpus) == ['He said "Stop."', "Then left!", "Why?", "Because.", "New para.", "End."]


def test_atom_counts_add_up_and_merge_where_the_tokenizer_joins():
    qwen = get_tokenizer("qwen3.6")
    text = "Alpha beta. Gamma delta.\n\nEpsilon zeta. Eta theta iota.\n\n"
    starts = get_corpus("noise").__class__("t", text).unit_starts
    atom_starts, counts = measure_units(qwen, text, starts)
    assert counts.sum() == len(qwen.encode(text)) and len(counts) == 4
    # A boundary inside a word is not additive: those units merge into one atom.
    glued = "Haystacks are big. Needles are small."
    atom_starts, counts = measure_units(qwen, glued, np.asarray([0, 4, 18, len(glued)]))
    assert atom_starts.tolist() == [0, 18, len(glued)]
    assert counts.tolist() == [len(qwen.encode(glued[:18])), len(qwen.encode(glued[18:]))]


def test_token_cache_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("NIAH_CACHE_DIR", str(tmp_path))
    (tmp_path / "doc.txt").write_text("Some text. More of it here.\n\nA second paragraph follows. Done.")
    corpus = get_corpus(f"files:{tmp_path}/doc.txt")
    qwen = get_tokenizer("qwen3.6")
    measured = tokenized(corpus, qwen)
    path = cache_path(corpus, qwen)
    assert path.is_file() and path.parent == tmp_path / "corpus"
    fresh = TokenizedCorpus(corpus, qwen, lazy=False)
    assert np.array_equal(fresh.counts, measured.counts) and measured.total == len(qwen.encode(corpus.text))
    assert measured.cum_at(measured.atoms * 3 + 1) == 3 * measured.total + int(measured.counts[0])


def test_the_run_records_what_the_builtin_corpus_is(builtin, tmp_path):
    from niah.run.runner import RunConfig, run_fingerprint

    config = RunConfig(grid=((1024, (50.0,)),), out_dir=tmp_path, url="http://127.0.0.1:1")
    assert run_fingerprint(config, builtin, {})["corpus_about"] == essays.ABOUT
    assert "corpus_about" not in run_fingerprint(config, get_corpus("noise"), {})  # the name says it
