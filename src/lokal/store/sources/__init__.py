"""``pull``: pick where a model comes from, then stream the source's progress.

The text a user gives decides the source:

- an existing local file path (``./x.gguf``, ``/abs/x.gguf``, ``~/x.gguf``) → the file, copied in;
- ``http(s)://…`` → a download of that file;
- ``hf.co/<owner>/<repo>[:<quant>]`` (or ``huggingface.co/…``) → the Hugging Face hub;
- a catalog name (``smollm2``, ``phi4:mini-q8_0``, ``microsoft/phi-4-mini``) → the variant's first available
  source: its bundled pip package when installed, else the registry or the hub as the catalog lists;
- anything else → the Ollama registry at ``LOKAL_REGISTRY``.

Files and URLs are stored as ``<file stem>:latest`` unless a ``target`` name is given; everything else under
the name as given. Problems with the name itself (invalid, missing package) are raised by ``pull`` at once,
before any progress, so a server can still answer with the right status.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lokal.config import Settings
from lokal.errors import BadRequest
from lokal.store.catalog import Catalog, CatalogVariant, ConvertSpec, HFFolderSpec, HFSpec, RegistrySpec
from lokal.store.names import ModelName
from lokal.store.sources.base import Progress, Source, name_from_file
from lokal.store.sources.bundled import BundledSource, is_usable
from lokal.store.sources.hf import HFSource
from lokal.store.sources.registry import RegistrySource
from lokal.store.sources.url import FileSource, URLSource, default_name_for_url
from lokal.store.store import Store

__all__ = ["Progress", "Pull", "PullPlan", "Source", "plan_pull", "pull"]

_PATH_PREFIXES = ("/", "./", "../", "~")
_HF_PREFIXES = ("hf.co/", "huggingface.co/", "www.huggingface.co/")


@dataclass(frozen=True)
class PullPlan:
    source: Source
    name: ModelName  # where the model will be stored


class Pull(Iterator[Progress]):
    """The progress of one pull; ``name`` is the name the model is stored under."""

    def __init__(self, store: Store, plan: PullPlan):
        self.name = plan.name
        self.source = plan.source
        self._events = plan.source.pull(store, plan.name)

    def __next__(self) -> Progress:
        return next(self._events)

    def close(self) -> None:
        self._events.close()


def pull(store: Store, name: str, settings: Settings, *, insecure: bool = False, target: str | None = None,
         catalog: Catalog | None = None, allow_local_files: bool = True, allow_private: bool = True) -> Pull:
    return Pull(store, plan_pull(name, settings, insecure=insecure, target=target, catalog=catalog,
                                 allow_local_files=allow_local_files, allow_private=allow_private))


def plan_pull(text: str, settings: Settings, *, insecure: bool = False, target: str | None = None,
              catalog: Catalog | None = None, allow_local_files: bool = True, allow_private: bool = True
              ) -> PullPlan:
    """Which source ``text`` means and which name it will be stored under.

    ``allow_local_files=False`` is for pulls a remote client asks for: a server must not let callers
    import whatever file the server process can read (upload blobs with /api/blobs instead).
    ``allow_private=False`` likewise keeps such pulls from reaching private, loopback and link-local
    addresses (URLs and ``host/namespace/model`` names; see ``lokal.security.ssrf``)."""
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("a model name to pull is required")
    text = text.strip()
    target_name = ModelName.parse(target) if target else None
    if _is_local_path(text):
        if not allow_local_files:
            raise BadRequest(f"{text!r} is a local path; the server pulls only by name or URL "
                             "(use `lokal pull` on the server machine, or upload with /api/blobs and /api/create)")
        path = Path(text).expanduser()
        if not path.is_file():
            raise BadRequest(f"{text} is not a file")
        return PullPlan(FileSource(path), target_name or name_from_file(path.name))
    if text.lower().startswith(("http://", "https://")):
        return PullPlan(URLSource(text, insecure=insecure, allow_private=allow_private),
                        target_name or default_name_for_url(text))
    if text.lower().startswith(_HF_PREFIXES):
        name = ModelName.parse(text)
        return PullPlan(HFSource.for_name(name), target_name or name)
    name = ModelName.parse(text)
    variant = (catalog or Catalog.packaged()).resolve(text)
    if variant is not None:
        return PullPlan(_catalog_source(variant, settings, insecure), target_name or name)
    return PullPlan(RegistrySource.for_name(name, settings.registry, insecure=insecure, allow_private=allow_private),
                    target_name or name)


def _is_local_path(text: str) -> bool:
    return text.startswith(_PATH_PREFIXES) or (text.lower().endswith(".gguf") and Path(text).is_file())


def _catalog_source(variant: CatalogVariant, settings: Settings, insecure: bool) -> Source:
    """The first source of the variant that can work here; a bundled package that is not installed (or
    that needs conversion) is passed over, and is the error when nothing else is listed."""
    for spec in variant.sources:
        if isinstance(spec, RegistrySpec):
            return RegistrySource.for_name(ModelName.parse(spec.name), settings.registry, insecure=insecure)
        if isinstance(spec, HFSpec):
            return HFSource(spec.repo, file=spec.file)
        if isinstance(spec, HFFolderSpec):
            from lokal.store.sources.onnx_sources import HFFolderSource

            return HFFolderSource(spec.repo, spec.folder, provider=spec.provider, precision=spec.precision,
                                  family=variant.model, parameter_size=f"{variant.parameters:g}B")
        if isinstance(spec, ConvertSpec):
            from lokal.store.sources.onnx_sources import ConvertSource

            return ConvertSource(spec.source, spec.precision, spec.provider)
        if is_usable(spec.package):
            return BundledSource(spec.package, model_label=variant.model)
    # Only bundled sources, none usable: constructing the first raises why (MissingPackage, …).
    return BundledSource(variant.sources[0].package, model_label=variant.model)
