"""Generated text in a section (the generate and corpus kinds): the samples quoted, the share of
their words that occur in the training text, and the table of samples."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import regex

from tinylm.report.section import Section
from tinylm.report.tables import Column, fmt_excerpt, fmt_int, fmt_loss, fmt_ratio, fmt_share
from tinylm.training.summary import SUMMARY

# A word: letters, with inner apostrophes (don't, Lily's); compared in lower case.
WORD = regex.compile(r"\p{L}+(?:['’]\p{L}+)*")


TEXT_CHUNK_CHARS = 1 << 24


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def words_in_text(wanted: set[str], path: Path) -> set[str]:
    """The words of `wanted` that occur in the text file, reading only until all are found."""
    found: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as text:
        tail = ""
        while (chunk := text.read(TEXT_CHUNK_CHARS)) and found != wanted:
            chunk = tail + chunk
            cut = max(chunk.rfind(" "), chunk.rfind("\n"))  # a word cut at the chunk's end waits for the next
            head, tail = (chunk[:cut], chunk[cut:]) if cut >= 0 else ("", chunk)
            found |= wanted & set(words(head))
        found |= wanted & set(words(tail))
    return found


@dataclass
class KnownWords:
    """How many of the generated words occur in the training text."""

    per_sample: list[float | None]    # share of each sample's words found in the training text
    total: int                        # words in all samples
    known: int                        # of which occur in the training text
    unknown: list[str]                # distinct words not in it, most frequent first

    @property
    def ratio(self) -> float | None:
        return self.known / self.total if self.total else None


def known_words(texts: list[str], train_text: Path) -> KnownWords:
    if not train_text.is_file():
        raise FileNotFoundError(f"--train-text {str(train_text)!r}: file not found")
    generated = [words(t) for t in texts]
    found = words_in_text({w for ws in generated for w in ws}, train_text)
    missing = Counter(w for ws in generated for w in ws if w not in found)
    return KnownWords(
        per_sample=[sum(w in found for w in ws) / len(ws) if ws else None for ws in generated],
        total=sum(map(len, generated)), known=sum(len(ws) for ws in generated) - sum(missing.values()),
        unknown=[w for w, _ in missing.most_common()])


def known_words_text(known: KnownWords, shown: int = 8) -> str:
    if not known.total:
        return "The samples hold no words."
    text = (f"{fmt_share(known.ratio)} of the {fmt_int(known.total)} generated words occur in the "
            f"training text (words: letters with inner apostrophes, compared in lower case)")
    if not known.unknown:
        return text + "."
    listed = ", ".join(repr(w) for w in known.unknown[:shown])
    more = f" and {fmt_int(len(known.unknown) - shown)} more" if len(known.unknown) > shown else ""
    return text + f"; the {fmt_int(len(known.unknown))} distinct words that do not: {listed}{more}."


def distinct_word_ratio(text: str) -> float | None:
    """Distinct words / words: low for text that repeats itself."""
    words = text.split()
    return len(set(words)) / len(words) if words else None


def samples_frame(generated: dict, known: KnownWords | None = None) -> pd.DataFrame:
    """One row per sample; `known`: the share of its words found in the training text."""
    samples = generated["samples"]
    in_training = known.per_sample if known is not None else [None] * len(samples)
    return pd.DataFrame([{
        "temperature": s["temperature"], "top_p": s["top_p"], "seed": s["seed"],
        "num_new_tokens": s["num_new_tokens"], "stopped_at_eot": bool(s["stopped_at_eot"]),
        "distinct_word_ratio": distinct_word_ratio(s["completion"]), "known_word_ratio": share,
        "completion": s["completion"],
    } for s, share in zip(samples, in_training)]).astype(object)


SAMPLE_COLUMNS = [Column("seed", "seed", fmt_int), Column("num_new_tokens", "new tokens", fmt_int),
                  Column("stopped_at_eot", "ended at end-of-text"),
                  Column("distinct_word_ratio", "distinct words", fmt_ratio),
                  Column("known_word_ratio", "words in training text", fmt_share),
                  Column("completion", "completion (beginning; whole text in the CSV)", fmt_excerpt)]


def write_samples(section: Section, generated: dict, train_text: Path | None, caption: str) -> None:
    """The quoted samples, how many of their words the training text holds, and the samples table."""
    section.markdown(_quotedwrite_samples(generated))
    known = None
    if train_text is not None:
        known = known_words([s["completion"] for s in generated["samples"]], Path(train_text))
        section.paragraph(known_words_text(known))
    section.table(samples_frame(generated, known), SAMPLE_COLUMNS, "samples", caption)


def _quotedwrite_samples(generated: dict) -> str:
    blocks = []
    for sample in generated["samples"]:
        paragraphs = [p.strip() for p in sample["text"].split("\n\n") if p.strip()]
        quoted = "\n>\n".join("\n".join("> " + line for line in p.splitlines()) for p in paragraphs)
        blocks.append(f"Seed {sample['seed']}:\n\n{quoted}\n")
    return "\n".join(blocks)


def generation_text(generated: dict, what: str) -> str:
    """Which run the samples come from (`what` says why that one), at which settings, and how long they are."""
    run, settings, samples = generated["run"], generated["settings"], generated["samples"]
    lengths = [s["num_new_tokens"] for s in samples]
    stopped = sum(bool(s["stopped_at_eot"]) for s in samples)
    length = (f"all {fmt_int(lengths[0])} tokens long" if min(lengths) == max(lengths)
              else f"{fmt_int(min(lengths))} to {fmt_int(max(lengths))} tokens long")
    loss = fmt_loss(run.get(SUMMARY.final_val_loss))  # tinylm generate copies the run's summary fields
    return (f"Text from {run[SUMMARY.name]} ({what}; final validation loss {loss}) "
            f"for the prompt {generated['prompt']!r} at temperature "
            f"{', '.join(map(str, settings['temperatures']))} and top-p {', '.join(map(str, settings['top_ps']))}, "
            f"at most {fmt_int(settings['max_new_tokens'])} new tokens. {stopped} of {len(samples)} samples ended at "
            f"<|endoftext|> before the limit; they are {length}.")
