"""Reading a training corpus: many files and `-` (stdin), any size, in chunks.

Files are read in blocks of bytes and decoded incrementally, so only one chunk of text
(about `chunk_bytes`) is held at a time. A chunk ends just after a newline that is
followed by a character other than whitespace, where no pre-tokenizer joins text
across the cut; a chunk without such a place is cut at its end. Text that is not UTF-8
raises TokenizerError naming the file, byte offset and line.
"""
import codecs
import os
import sys
from typing import Callable, Iterable, Iterator

from .errors import TokenizerError

CHUNK_BYTES = 1 << 20


def _cut(text: str) -> int:
    """Where to end a chunk: after the last newline followed by non-whitespace, or 0."""
    pos = len(text) - 1  # a newline at the very end has no known follower yet
    while True:
        pos = text.rfind("\n", 0, pos)
        if pos < 0:
            return 0
        if not text[pos + 1].isspace():
            return pos + 1


def _describe(name: str, data_before: int, block: bytes, exc: UnicodeDecodeError, lines_before: int) -> str:
    offset = data_before + exc.start
    line = lines_before + block.count(b"\n", 0, max(exc.start, 0)) + 1
    bad = exc.object[exc.start:max(exc.end, exc.start + 1)]
    return (f"{name}: not UTF-8 text at byte {offset} (line {line}: bytes {bad.hex(' ')}); "
            f"convert it to UTF-8 first (e.g. iconv -t UTF-8)")


def read_text_chunks(path, chunk_bytes: int = CHUNK_BYTES, on_bytes: Callable | None = None) -> Iterator[str]:
    """Chunks of the text of one file (`-` for stdin), cut at safe newlines."""
    name = "<stdin>" if str(path) == "-" else str(path)
    if str(path) == "-":
        stream, close = sys.stdin.buffer, False
    else:
        try:
            stream, close = open(path, "rb"), True
        except FileNotFoundError:
            raise TokenizerError(f"{name}: no such corpus file") from None
        except IsADirectoryError:
            raise TokenizerError(f"{name}: is a directory, not a corpus file") from None
        except OSError as exc:
            raise TokenizerError(f"{name}: cannot read ({exc.strerror})") from None
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed = lines = 0
    pending = ""
    try:
        while True:
            block = stream.read(chunk_bytes)
            final = not block
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as exc:
                # the decoder keeps up to 3 bytes of an unfinished character from the last block
                held = exc.object[:len(exc.object) - len(block)] if len(exc.object) > len(block) else b""
                raise TokenizerError(_describe(name, consumed - len(held), exc.object, exc, lines)) from None
            consumed += len(block)
            lines += block.count(b"\n")
            if on_bytes is not None and block:
                on_bytes(len(block))
            pending += text
            if final:
                break
            cut = _cut(pending)
            if cut:
                yield pending[:cut]
                pending = pending[cut:]
            elif len(pending) > 4 * chunk_bytes:  # one enormous line: cut anyway
                yield pending
                pending = ""
        if pending:
            yield pending
    finally:
        if close:
            stream.close()


def iter_corpus(paths: Iterable, chunk_bytes: int = CHUNK_BYTES, on_bytes: Callable | None = None) -> Iterator[str]:
    """Text chunks of every file in turn; a file's last chunk never joins the next file's."""
    for path in paths:
        yield from read_text_chunks(path, chunk_bytes, on_bytes)


def corpus_size(paths) -> int | None:
    """Total bytes of the files, or None when one of them is stdin or not a regular file."""
    total = 0
    for path in paths:
        if str(path) == "-":
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        total += st.st_size
    return total


def pydoc_corpus() -> Iterator[str]:
    """The standard library's pydoc topics: about 0.8 MB of English on every Python."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key] + "\n\n"
