"""Zip packaging decides per file, from a sample spread over it, whether deflating pays."""

from __future__ import annotations

import zipfile

import numpy as np

from neuropod.package.archive import write_zip

CODE = b"def forward(self, input_ids, attention_mask):\n    return self.encoder(self.embeddings(input_ids))\n"


def _weights(megabytes: int) -> bytes:
    """Float32 weights: deflate saves about 7 % of them."""
    return np.random.default_rng(0).standard_normal(megabytes << 18).astype(np.float32).tobytes()


def test_an_archive_with_code_first_and_weights_after_is_stored(tmp_path):
    """A TorchScript file holds its code (text) first and its weights after: the head is no sample of it."""
    tree = tmp_path / "tree"
    tree.mkdir()
    head = CODE * ((256 << 10) // len(CODE))  # 256 KiB of code, then 15 MiB of weights: 8.5 % to save
    (tree / "model.pt").write_bytes(head + _weights(15))
    (tree / "vocab.txt").write_bytes(CODE * 50_000)  # big, and text: deflated
    (tree / "small.json").write_bytes(b'{"a": 1}')
    write_zip(tree, tmp_path / "p.zip")
    with zipfile.ZipFile(tmp_path / "p.zip") as zf:
        kinds = {info.filename: info.compress_type for info in zf.infolist()}
    assert kinds == {
        "model.pt": zipfile.ZIP_STORED,
        "vocab.txt": zipfile.ZIP_DEFLATED,
        "small.json": zipfile.ZIP_DEFLATED,
    }


def test_weights_first_and_much_text_after_is_deflated(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "mixed.bin").write_bytes(_weights(1) + CODE * 200_000)
    write_zip(tree, tmp_path / "p.zip")
    with zipfile.ZipFile(tmp_path / "p.zip") as zf:
        assert zf.getinfo("mixed.bin").compress_type == zipfile.ZIP_DEFLATED
