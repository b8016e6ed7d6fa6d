"""FILE knowledge: documents chunked, embedded with all-minilm, retrieved into the system prompt, listed in
responses and in `lokal show`; unreadable documents are refused with nothing stored."""

from __future__ import annotations

import json
import httpx
import pytest
from server_fixture import start_server

from lokal.cli.models import LocalBackend
from lokal.config import Settings
from lokal.knowledge.documents import chunk_text
from lokal.store.sources import pull

FACT = "The vault access code of the Quellmark archive is ZEBRA-7741, changed every third Tuesday."
GARDENING = [
    "Tomatoes grow best in warm soil with plenty of sun.", "Water tomato plants deeply twice a week.",
    "Stake the tomato stems so the fruit stays off the ground.", "Pinch out side shoots to keep the plant tidy.",
    "Mulch around the plants keeps the soil moist in summer.", "Feed tomatoes with a potash-rich fertiliser.",
    "Water at the base of the plant, not on the leaves.", "Harvest tomatoes when they are fully coloured.",
]
FILLER = [
    "The Roman aqueducts carried water over long distances using gravity alone. Engineers kept a gentle slope "
    "of a few centimetres per kilometre across valleys and through hills.",
    "A sourdough starter is flour and water left to ferment with wild yeast. Feed it daily, keep it at room "
    "temperature, and use it when it doubles within a few hours.",
    "Migrating birds navigate using the sun, the stars and the earth's magnetic field. Some species fly "
    "thousands of kilometres without stopping to rest or feed.",
]
QUESTION = "What is the vault access code of the Quellmark archive?"
UNRELATED = "How should I water tomato plants?"


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF whose page shows ``text`` in Helvetica: written by hand, read back by pypdf."""
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """A store with smollm2, all-minilm and `kb`: the seed's enterprise Modelfile with real FILE documents."""
    pytest.importorskip("all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("kb")
    models = root / "models"
    settings = Settings(environ={"LOKAL_MODELS": str(models), "LOKAL_HOST": "127.0.0.1:9"})
    backend = LocalBackend(settings)
    for name in ("smollm2", "all-minilm"):
        for _ in pull(backend.store, name, settings):
            pass
    # Gardening first and long (several chunks of it), then the fact among unrelated paragraphs.
    gardening = " ".join(GARDENING * 6)
    (root / "contoso_guidelines.txt").write_text("\n\n".join([gardening, FILLER[0], FACT] + FILLER[1:]))
    (root / "security_protocols.pdf").write_bytes(tiny_pdf("Badges must be worn visibly at all times."))
    (root / "Modelfile").write_text('''FROM smollm2

PARAMETER temperature 0.7
PARAMETER top_p 0.9
PARAMETER context_length 4096
PARAMETER num_gpu 1
PARAMETER num_thread 8
PARAMETER knowledge_top_k 2

SYSTEM """
You are an enterprise assistant for Contoso Corporation.
"""

# Custom model knowledge (optional)
FILE ./contoso_guidelines.txt
FILE ./security_protocols.pdf
''')
    statuses = [event.status for event in backend.create("kb", root / "Modelfile", None)]
    assert any(status.startswith("embedding ") for status in statuses) and statuses[-1] == "success"
    return root, models, backend


def test_chunks_overlap_and_keep_offsets() -> None:
    text = " ".join(f"word{i}" for i in range(600))
    chunks = chunk_text("doc.txt", text, size=200, overlap=50)
    assert len(chunks) > 10
    for chunk in chunks:
        assert text[chunk.offset:chunk.offset + len(chunk.text)] == chunk.text  # the offset finds the chunk
    for first, second in zip(chunks, chunks[1:]):
        assert second.offset < first.offset + len(first.text)  # neighbours overlap
    assert chunks[-1].text.endswith("word599")


def test_show_lists_the_files(kb) -> None:
    _, _, backend = kb
    description = backend.describe("kb")
    assert description.knowledge == ["./contoso_guidelines.txt", "./security_protocols.pdf"]
    assert "num_gpu" in description.parameters


def _chat(server, question: str, stream: bool = False) -> dict:
    body = {"model": "kb", "messages": [{"role": "user", "content": question}], "stream": stream,
            "options": {"temperature": 0, "num_predict": 1}}
    response = httpx.post(server.url + "/api/chat", json=body, timeout=300)
    assert response.status_code == 200, response.text
    if not stream:
        return response.json()
    return [json.loads(line) for line in response.text.splitlines() if line][-1]


def test_the_fact_is_retrieved_for_its_question_and_reaches_the_prompt(kb, tmp_path, smollm2_path) -> None:
    root, models, _ = kb
    server = start_server(models, tmp_path / "serve.log")
    try:
        answer = _chat(server, QUESTION)
        first = answer["knowledge"][0]
        assert first["file"] == "./contoso_guidelines.txt" and "ZEBRA-7741" in first["chunk"]
        assert first["score"] > 0.4
        assert _chat(server, QUESTION, stream=True)["knowledge"] == answer["knowledge"]
        # The chunk is in the prompt the model saw: the response's context, detokenized by llama.cpp itself.
        generate = httpx.post(server.url + "/api/generate", json={
            "model": "kb", "prompt": QUESTION, "stream": False, "options": {"num_predict": 1}}, timeout=300).json()
        assert "ZEBRA-7741" in _detokenize(smollm2_path, generate["context"])
        assert "[./contoso_guidelines.txt]" in _detokenize(smollm2_path, generate["context"])
        unrelated = _chat(server, UNRELATED)
        assert all("ZEBRA-7741" not in hit["chunk"] for hit in unrelated.get("knowledge", [])[:1])
        assert "tomato" in unrelated["knowledge"][0]["chunk"].lower()
    finally:
        server.stop()


def _detokenize(model_path: str, tokens: list[int]) -> str:
    import llama_cpp

    llama = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
    return llama.detokenize(tokens).decode("utf-8", errors="replace")


@pytest.mark.parametrize("name, data, message", [
    ("notes.bin", b"\x00\x01\x02binary", "FILE ./notes.bin: a binary file"),
    ("locked.pdf", None, "FILE ./locked.pdf: an encrypted PDF"),
    ("scan.pdf", b"%PDF-1.4\nnot really a pdf", "FILE ./scan.pdf: not a readable PDF"),
    ("missing.txt", ..., "FILE ./missing.txt: no such file"),
])
def test_unreadable_documents_are_refused_and_nothing_is_stored(kb, tmp_path, name, data, message) -> None:
    _, models, backend = kb
    if data is None:
        from pypdf import PdfWriter

        writer = PdfWriter()
        writer.add_blank_page(100, 100)
        writer.encrypt("secret")
        with open(tmp_path / name, "wb") as file:
            writer.write(file)
    elif data is not ...:
        (tmp_path / name).write_bytes(data)
    (tmp_path / "Modelfile").write_text(f"FROM smollm2\nFILE ./{name}\n")
    before = sorted(p.name for p in (models / "manifests").rglob("*") if p.is_file())
    with pytest.raises(Exception) as caught:
        list(backend.create("broken-kb", tmp_path / "Modelfile", None))
    assert message in str(caught.value)
    assert sorted(p.name for p in (models / "manifests").rglob("*") if p.is_file()) == before
    assert [p.name for p in (models / "blobs").iterdir() if p.name.startswith("tmp-")] == []
