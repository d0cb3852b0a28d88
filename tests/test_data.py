import hashlib
import http.server
import io
import shutil
import socket
import tarfile
import threading
from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from study.errors import UsageError
from study.train import data
from study.train.data import (
    DATA_ENV,
    PTB_FILES,
    PTB_SHA256,
    batches,
    batchify,
    build_vocab,
    cache_dir,
    find_ptb,
    load_corpus,
    num_batches,
    read_words,
    to_ids,
)


@pytest.fixture(autouse=True)
def no_user_settings(monkeypatch, tmp_path):
    """No test sees the user's $STUDY_DATA_DIR or touches the real cache."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: ClassVar[set[str]] = set()  # paths answered with half the body and a Content-Length for all of it

    def do_GET(self):
        if self.path not in self.truncate:
            return super().do_GET()
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A static HTTP server on 127.0.0.1 serving `server.root`; `server.url` ends in '/'."""
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (_Handler,), {"truncate": set()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.root, httpd.url, httpd.truncate = root, f"http://127.0.0.1:{httpd.server_address[1]}/", handler.truncate
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def dead_url():
    """A URL on a local port where nothing listens: connection refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple-examples.tgz"


def make_archive(path: Path, files: dict[str, bytes], prefix: str = "./simple-examples/data/") -> None:
    """simple-examples.tgz as Mikolov ships it: members ./simple-examples/data/<name>."""
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        for name, body in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))


@pytest.fixture(scope="module")
def ptb_archive(tmp_path_factory, ptb_dir):
    """The real PTB files packed as simple-examples.tgz (built once per module: 5 MB)."""
    path = tmp_path_factory.mktemp("archive") / "simple-examples.tgz"
    make_archive(path, {name: (ptb_dir / name).read_bytes() for name in PTB_FILES})
    return path


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_batchify_drops_the_tail_and_fills_rows_one_after_another():
    data_ = batchify(torch.arange(22), batch_size=3)  # 22 // 3 = 7 per row, id 21 dropped
    assert data_.tolist() == [
        [0, 1, 2, 3, 4, 5, 6],
        [7, 8, 9, 10, 11, 12, 13],
        [14, 15, 16, 17, 18, 19, 20],
    ]


def test_batches_are_shifted_windows_worked_by_hand():
    data_ = batchify(torch.arange(22), batch_size=3)
    got = list(batches(data_, num_steps=2))
    expected = [
        ([[0, 1], [7, 8], [14, 15]], [[1, 2], [8, 9], [15, 16]]),
        ([[2, 3], [9, 10], [16, 17]], [[3, 4], [10, 11], [17, 18]]),
        ([[4, 5], [11, 12], [18, 19]], [[5, 6], [12, 13], [19, 20]]),
    ]
    assert [(x.tolist(), y.tolist()) for x, y in got] == expected
    assert len(got) == num_batches(7, 2) == (7 - 1) // 2
    # Views of the batchified tensor, not copies.
    assert all(t.untyped_storage().data_ptr() == data_.untyped_storage().data_ptr() for pair in got for t in pair)


def test_a_window_that_does_not_fit_is_left_out():
    data_ = batchify(torch.arange(22), batch_size=3)
    got = list(batches(data_, num_steps=4))  # (7 - 1) // 4 = 1: columns 4..6 never an input
    assert len(got) == 1
    x, y = got[0]
    assert x.tolist() == [[0, 1, 2, 3], [7, 8, 9, 10], [14, 15, 16, 17]]
    assert y.tolist() == [[1, 2, 3, 4], [8, 9, 10, 11], [15, 16, 17, 18]]


def test_too_small_a_corpus_names_batch_size_and_num_steps():
    data_ = batchify(torch.arange(22), batch_size=3)  # rows of 7
    assert len(list(batches(data_, num_steps=6))) == 1  # 7 ids: 6 inputs and one more target
    with pytest.raises(UsageError, match="batch_size 3 and num_steps 7"):
        batches(data_, num_steps=7)  # raises at the call, not at the first step
    with pytest.raises(UsageError, match="num_steps 7"):
        num_batches(7, 7)


def test_read_words_is_tfs_replace_then_split(tmp_path):
    # A PTB line, a blank line, a line without the trailing space, a CRLF line, no final newline.
    text = " the cat \n\n dog ran\n a b \r\n end"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    words = read_words(path)
    assert words == text.replace("\n", "<eos>").split()
    assert words == ["the", "cat", "<eos><eos>", "dog", "ran<eos>", "a", "b", "<eos>", "end"]


def test_vocabulary_counts_descending_ties_alphabetical_eos_counted():
    words = ["b", "a", "c", "<eos>", "c", "b", "<eos>", "c", "<eos>", "z"]  # c 3, <eos> 3, b 2, a 1, z 1
    assert list(build_vocab(words)) == ["<eos>", "c", "b", "a", "z"]
    assert build_vocab(words) == {"<eos>": 0, "c": 1, "b": 2, "a": 3, "z": 4}


def test_to_ids_drops_words_outside_the_vocabulary():
    ids = to_ids(["c", "zebra", "a", "<eos>"], {"<eos>": 0, "c": 1, "a": 2})
    assert ids.dtype == torch.int64 and ids.tolist() == [1, 2, 0]


def test_user_corpus_with_other_sums_is_accepted_and_its_sums_recorded(tiny_corpus_dir, capsys):
    corpus = load_corpus(tiny_corpus_dir)
    train_words = read_words(tiny_corpus_dir / "ptb.train.txt")
    assert corpus.folder == str(tiny_corpus_dir)
    assert corpus.vocab == tuple(build_vocab(train_words))
    assert corpus.train.tolist() == [corpus.vocab.index(w) for w in train_words]
    valid_words = read_words(tiny_corpus_dir / "ptb.valid.txt")
    assert "zebra" in valid_words and corpus.valid.numel() == len(valid_words) - 1  # OOV dropped
    for name in PTB_FILES:
        assert corpus.sha256[name] == hashlib.sha256((tiny_corpus_dir / name).read_bytes()).hexdigest()
        assert corpus.sha256[name] != PTB_SHA256[name]
    assert capsys.readouterr().out == ""
    short = corpus.truncated(10)
    assert short.train.tolist() == corpus.train[:10].tolist() and short.vocab is corpus.vocab
    assert corpus.truncated(0) is corpus


def test_env_var_names_the_folder_and_data_dir_wins_over_it(tiny_corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tiny_corpus_dir))
    assert find_ptb(urls=()) == tiny_corpus_dir
    with pytest.raises(UsageError, match="nowhere"):
        find_ptb(tmp_path / "nowhere", urls=())


@pytest.mark.parametrize("case", ["no folder", "no valid file", "empty train", "not utf-8"])
def test_bad_user_folder_is_one_line_naming_the_path(tiny_corpus_dir, case):
    folder, culprit = tiny_corpus_dir, tiny_corpus_dir
    if case == "no folder":
        shutil.rmtree(folder)
    elif case == "no valid file":
        (folder / "ptb.valid.txt").unlink()
    elif case == "empty train":
        culprit = folder / "ptb.train.txt"
        culprit.write_text("\n\n")
    else:
        culprit = folder / "ptb.test.txt"
        culprit.write_bytes(b" caf\xe9 \n")
    with pytest.raises(UsageError) as raised:
        load_corpus(folder)
    message = str(raised.value)
    assert str(culprit) in message and "\n" not in message
    if culprit == folder:  # says what the folder must hold
        assert all(name in message for name in PTB_FILES)


def test_download_of_the_archive_fills_the_cache(server, ptb_archive, dead_url, tmp_path):
    shutil.copy(ptb_archive, server.root / "simple-examples.tgz")
    cache = tmp_path / "cache"
    assert find_ptb(cache=cache, urls=(server.url + "simple-examples.tgz",)) == cache
    assert files_in(cache) == sorted(PTB_FILES)  # no temp files left
    assert {name: hashlib.sha256((cache / name).read_bytes()).hexdigest() for name in PTB_FILES} == PTB_SHA256
    # A complete cache is used without asking the network.
    corpus = load_corpus(cache=cache, urls=(dead_url,))
    assert corpus.folder == str(cache) and corpus.sha256 == PTB_SHA256 and len(corpus.vocab) == 10000


def test_download_with_a_wrong_sum_is_refused_and_writes_nothing(server, tmp_path):
    fakes = {name: b" fake words \n" for name in PTB_FILES}
    make_archive(server.root / "simple-examples.tgz", fakes, prefix="simple-examples/data/")  # no "./" also works
    cache = tmp_path / "cache"
    with pytest.raises(UsageError) as raised:
        find_ptb(cache=cache, urls=(server.url + "simple-examples.tgz",))
    message = str(raised.value)
    fake_sum = hashlib.sha256(b" fake words \n").hexdigest()
    assert "ptb.train.txt" in message and PTB_SHA256["ptb.train.txt"] in message and fake_sum in message
    assert files_in(cache) == []


def test_no_network_is_one_line_saying_where_it_looked_and_what_to_do(dead_url, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(UsageError) as raised:
        find_ptb(cache=cache, urls=(dead_url,))
    message = str(raised.value)
    assert "\n" not in message
    for part in (str(cache), dead_url, "refused", "--data-dir DIR", f"{DATA_ENV}=DIR"):
        assert part in message


def test_archive_missing_falls_back_to_the_mirror(server, ptb_dir, tmp_path):
    (server.root / "data").mkdir()
    for name in PTB_FILES:
        shutil.copy(ptb_dir / name, server.root / "data" / name)
    cache = tmp_path / "cache"
    urls = (server.url + "simple-examples.tgz", server.url + "data/")  # the first answers 404
    assert find_ptb(cache=cache, urls=urls) == cache
    assert files_in(cache) == sorted(PTB_FILES)


def test_half_a_download_never_has_the_final_name(server, ptb_dir, tmp_path):
    for name in PTB_FILES:
        shutil.copy(ptb_dir / name, server.root / name)
    server.truncate.add("/ptb.train.txt")
    cache = tmp_path / "cache"
    with pytest.raises(UsageError, match=r"ptb.train.txt: download cut short"):
        find_ptb(cache=cache, urls=(server.url,))
    assert files_in(cache) == []


def test_corrupted_cache_file_is_not_used_but_downloaded_again(server, ptb_dir, dead_url, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in PTB_FILES:
        shutil.copy(ptb_dir / name, cache / name)
        shutil.copy(ptb_dir / name, server.root / name)
    (cache / "ptb.valid.txt").write_bytes((ptb_dir / "ptb.valid.txt").read_bytes()[:-100])
    with pytest.raises(UsageError, match=r"ptb.valid.txt with a wrong sha256"):
        find_ptb(cache=cache, urls=(dead_url,))
    assert find_ptb(cache=cache, urls=(server.url,)) == cache
    assert hashlib.sha256((cache / "ptb.valid.txt").read_bytes()).hexdigest() == PTB_SHA256["ptb.valid.txt"]


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    assert cache_dir() == tmp_path / "xdg" / "study" / "ptb"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "study" / "ptb"


def test_real_ptb_loads_as_the_tutorial_says(ptb_dir, capsys):
    corpus = load_corpus(ptb_dir)
    assert len(corpus.vocab) == 10000 and corpus.vocab[0] == "the" and "<eos>" in corpus.vocab
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (929589, 73760, 82430)
    assert corpus.sha256 == PTB_SHA256
    assert capsys.readouterr() == ("", "")  # the canonical corpus loads silently


def test_default_sources_are_the_archive_then_the_mirror(monkeypatch, tmp_path):
    tried = []
    monkeypatch.setattr(data, "_download", lambda url, *args: tried.append(url))
    with pytest.raises(UsageError):
        find_ptb(cache=tmp_path / "cache")
    assert tried == [data.ARCHIVE_URL, data.MIRROR_URL]
    assert data.ARCHIVE_URL.endswith(".tgz") and data.MIRROR_URL.endswith("/")


def _rewrite(folder: Path, change) -> Path:
    """A copy of the corpus in `folder` with each file's bytes changed by `change`."""
    copy = folder.parent / f"{folder.name}-changed"
    copy.mkdir()
    for name in PTB_FILES:
        (copy / name).write_bytes(change((folder / name).read_bytes()))
    return copy


def test_a_byte_order_mark_or_crlf_line_ends_read_as_the_plain_corpus(tiny_corpus_dir):
    plain = load_corpus(tiny_corpus_dir)
    for change in (lambda b: "\ufeff".encode() + b, lambda b: b.replace(b"\n", b"\r\n")):
        other = load_corpus(_rewrite(tiny_corpus_dir, change))
        assert other.vocab == plain.vocab  # the first word is "the", not "\ufeffthe"
        for split in ("train", "valid", "test"):
            assert torch.equal(getattr(other, split), getattr(plain, split))
        shutil.rmtree(other.folder)


def test_cr_only_line_ends_are_refused_in_one_line(tiny_corpus_dir):
    folder = _rewrite(tiny_corpus_dir, lambda b: b.replace(b"\n", b"\r"))
    with pytest.raises(UsageError, match=r"ptb.train.txt: its lines end in CR alone") as error:
        load_corpus(folder)
    assert "\n" not in str(error.value) and "LF or CRLF" in str(error.value)
