"""Reading a knowledge document (text, Markdown, PDF) into plain text, and cutting it into overlapping chunks.

A document that cannot be read is an error naming it: a missing file, a binary file, an encrypted PDF or a
PDF with no text layer (a scan). Nothing is stored for a model whose documents do not all read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lokal.errors import BadRequest

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text", ".rst"}
# Characters per chunk and the overlap between neighbours: about 250 and 50 tokens, well inside the 512
# tokens a BERT-family embedding model reads, and a passage long enough to carry one fact with its context.
CHUNK_CHARS = 1000
OVERLAP_CHARS = 200


@dataclass(frozen=True)
class Chunk:
    file: str  # the document's name as the Modelfile gave it
    offset: int  # character offset of the chunk in the document's text
    text: str


def read_document(path: Path, name: str) -> str:
    """The text of the document at ``path`` (called ``name`` in messages)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"FILE {name}: cannot read it: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".pdf" or data.startswith(b"%PDF-"):
        text = _pdf_text(data, name)
    else:
        if b"\x00" in data[:8192]:
            raise BadRequest(f"FILE {name}: a binary file; knowledge documents are text, Markdown or PDF")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BadRequest(f"FILE {name}: not UTF-8 text; knowledge documents are text, Markdown or PDF") from None
    if not text.strip():
        raise BadRequest(f"FILE {name}: no text in it")
    return text


def _pdf_text(data: bytes, name: str) -> str:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise BadRequest(f"FILE {name}: an encrypted PDF; decrypt it first")
        text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except PyPdfError as exc:
        raise BadRequest(f"FILE {name}: not a readable PDF ({exc})") from None
    if not text.strip():
        raise BadRequest(f"FILE {name}: the PDF has no text layer (a scan?); nothing to learn from it")
    return text


def chunk_text(name: str, text: str, size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[Chunk]:
    """Windows of about ``size`` characters, each starting ``overlap`` characters before the previous one
    ended; boundaries move back to whitespace so that words stay whole."""
    chunks: list[Chunk] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + size // 2, end)
            newline = text.rfind("\n", start + size // 2, end)
            end = max(space, newline) if max(space, newline) > start else end
        piece = text[start:end].strip()
        if piece:
            chunks.append(Chunk(name, start + (len(text[start:end]) - len(text[start:end].lstrip())), piece))
        if end >= len(text):
            break
        next_start = max(end - overlap, start + 1)
        space = text.find(" ", next_start, end)
        start = space + 1 if space >= 0 else next_start
    return chunks
