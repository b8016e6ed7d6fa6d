"""Pull sources for ONNX catalog variants.

- ``HFFolderSource``: an onnxruntime-genai model folder inside a Hugging Face repo (how Foundry Local's
  variants are published: one folder per device, e.g. ``cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4``).
  Every file of the folder is downloaded (resumable, sha256-verified like a GGUF), then stored as one
  ONNX manifest.
- ``ConvertSource``: made here by `lokal convert` from the catalog's GGUF (the bundled SmolLM2's ONNX variant).
"""

from __future__ import annotations

from typing import Iterator

from huggingface_hub import hf_hub_url
from huggingface_hub.utils import build_hf_headers

from lokal.errors import ModelNotFound
from lokal.store.manifests import CONFIG_MEDIA_TYPE, Layer, Manifest
from lokal.store.names import ModelName
from lokal.store.onnx_layout import ONNX_MEDIA_TYPE, OnnxInfo, onnx_config_blob
from lokal.store.sources.base import Progress, download_blob, http_client
from lokal.store.sources.hf import HFSource
from lokal.store.store import Store


class HFFolderSource(HFSource):
    def __init__(self, repo: str, folder: str, *, provider: str, precision: str, family: str = "",
                 parameter_size: str = ""):
        super().__init__(repo)
        self.folder = folder.strip("/")
        self.info = OnnxInfo(family=family, parameter_size=parameter_size, precision=precision, provider=provider,
                             source=f"hf.co/{repo}/{self.folder}")

    def pull(self, store: Store, name: ModelName) -> Iterator[Progress]:
        yield Progress("pulling manifest")
        info = self._repo_info(name)
        prefix = self.folder + "/"
        files = [s for s in info.siblings or [] if s.rfilename.startswith(prefix)]
        if not any(s.rfilename == prefix + "genai_config.json" for s in files):
            raise ModelNotFound(name.display, f"{self.repo} on {self.host} has no ONNX model folder {self.folder}")
        layers = []
        with http_client() as client, store.writing():
            for sibling in files:
                digest = "sha256:" + sibling.lfs.sha256 if sibling.lfs else None
                size = sibling.lfs.size if sibling.lfs else sibling.size
                url = hf_hub_url(self.repo, sibling.rfilename, revision=info.sha or self.revision,
                                 endpoint=self.endpoint)
                stored = yield from download_blob(client, url, store.blobs, digest=digest, size=size,
                                                  host=self.host, what=f"{self.repo}/{sibling.rfilename}",
                                                  headers=build_hf_headers())
                layers.append(Layer(ONNX_MEDIA_TYPE, stored, store.blobs.size(stored),
                                    sibling.rfilename[len(prefix):]))
            yield Progress("writing manifest")
            config = onnx_config_blob(self.info, layers)
            store.write_manifest(name, Manifest(Layer(CONFIG_MEDIA_TYPE, store.blobs.add_bytes(config), len(config)),
                                                layers))
        yield Progress("success")


class ConvertSource:
    def __init__(self, source: str, precision: str, provider: str):
        self.source = source
        self.precision = precision
        self.provider = provider

    def pull(self, store: Store, name: ModelName) -> Iterator[Progress]:
        from lokal.convert.onnx_export import check_installed, convert_to_onnx

        check_installed()  # before pulling the GGUF: say what is missing first
        if not store.exists(self.source):
            from lokal.config import Settings
            from lokal.store.sources import pull

            yield from pull(store, self.source, Settings())
        for progress in convert_to_onnx(store, self.source, precision=self.precision, provider=self.provider,
                                        target=str(name)):
            yield Progress(f"converting: {progress.status}")
        yield Progress("success")
