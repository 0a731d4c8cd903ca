"""Offline preparation of the real Fashion-MNIST data set from Debian's `dataset-fashion-mnist`.

Debian ships the upstream IDX files with only the gzip header changed (no file name, a different
modification time). TFDS checks the sha256 of a manual download against the upstream files, so
we splice the upstream header back onto the unchanged deflate stream and trailer, check the
result against TFDS's own recorded checksums, and let TFDS build the data set from those files.
No network is needed and nothing is recompressed.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from typing import Mapping

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

# Upstream gzip modification times (seconds since the epoch) of the four files.
UPSTREAM_MTIMES: Mapping[str, int] = {
    "train-images-idx3-ubyte.gz": 1504176606,
    "train-labels-idx1-ubyte.gz": 1504176606,
    "t10k-images-idx3-ubyte.gz": 1504176627,
    "t10k-labels-idx1-ubyte.gz": 1504176627,
}

_GZIP_MAGIC = b"\x1f\x8b"
_FTEXT, _FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 1, 2, 4, 8, 16


def gzip_payload_offset(data: bytes) -> int:
    """Where the deflate stream of a gzip member starts (after its RFC 1952 header).

    Args:
      data: the bytes of one gzip member.

    Returns:
      The offset of the deflate stream in `data`.

    Raises:
      ValueError: `data` is not a gzip (deflate) member.
    """
    if len(data) < 10 or data[:2] != _GZIP_MAGIC or data[2] != 8:
        raise ValueError("not a gzip (deflate) file: bad magic or compression method")
    flags = data[3]
    pos = 10
    if flags & _FEXTRA:
        (xlen,) = struct.unpack("<H", data[pos : pos + 2])
        pos += 2 + xlen
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            end = data.index(b"\0", pos)
            pos = end + 1
    if flags & _FHCRC:
        pos += 2
    return pos


def rebuild_gzip_header(data: bytes, name: str, mtime: int) -> bytes:
    """Replaces the header of a gzip member by one naming `name` at `mtime`.

    The new header carries only FNAME (latin-1, NUL-terminated), `mtime`, and the original
    extra-flags and OS bytes; the compressed payload and the CRC32/size trailer are kept
    byte for byte, so the file decompresses to exactly the same content.

    Args:
      data: the bytes of one gzip member.
      name: the file name to record (latin-1, without NUL).
      mtime: the modification time to record (Unix seconds, 32 bits).

    Returns:
      The rebuilt gzip member.

    Raises:
      ValueError: `mtime` or `name` does not fit the header, or `data` is not gzip.
    """
    if not 0 <= mtime < 2**32:
        raise ValueError(f"mtime must fit in 32 unsigned bits, got {mtime}")
    encoded_name = name.encode("latin-1")
    if b"\0" in encoded_name:
        raise ValueError(f"file name must not contain NUL, got {name!r}")
    payload = data[gzip_payload_offset(data) :]
    xfl_os = data[8:10]
    header = _GZIP_MAGIC + bytes([8, _FNAME]) + struct.pack("<I", mtime) + xfl_os
    return header + encoded_name + b"\0" + payload


def tfds_checksums() -> dict[str, tuple[int, str]]:
    """TFDS's recorded checksums of the Fashion-MNIST files.

    Returns:
      `{file name: (size in bytes, sha256 hex digest)}` from TFDS's checksums file.
    """
    from importlib import resources

    text = (
        resources.files("tensorflow_datasets") / "url_checksums" / "fashion_mnist.txt"
    ).read_text()
    checksums = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        _, size, sha256, filename = line.split("\t")
        checksums[filename] = (int(size), sha256)
    return checksums


def missing_debian_files_message(source_dir: str, data_dir: str | None = None) -> str:
    """The one-line error for missing Debian Fashion-MNIST files.

    Args:
      source_dir: where the Debian files were looked for.
      data_dir: the TFDS directory the data set was wanted in, if any.

    Returns:
      The message: what is missing and how to install it.
    """
    target = f" at {data_dir}" if data_dir else ""
    return (
        f"Fashion-MNIST IDX files not found under {source_dir}. Install the Debian package "
        "`dataset-fashion-mnist` (apt-get install dataset-fashion-mnist) or point `data_dir` "
        f"at a prepared TFDS directory{target}."
    )


def rebuild_upstream_files(out_dir: str, source_dir: str = DEBIAN_DIR) -> dict[str, str]:
    """Writes the four upstream-identical .gz files into `out_dir`.

    Args:
      out_dir: an existing directory for the rebuilt files.
      source_dir: where Debian's `dataset-fashion-mnist` files are.

    Returns:
      `{file name: path written}`.

    Raises:
      FileNotFoundError: a Debian file is missing.
      ValueError: a rebuilt file's size or sha256 differs from TFDS's recorded checksum.
    """
    checksums = tfds_checksums()
    paths = {}
    for filename, mtime in UPSTREAM_MTIMES.items():
        source = os.path.join(source_dir, filename)
        if not os.path.isfile(source):
            raise FileNotFoundError(missing_debian_files_message(source_dir))
        with open(source, "rb") as f:
            rebuilt = rebuild_gzip_header(f.read(), filename[: -len(".gz")], mtime)
        size, sha256 = checksums[filename]
        got = hashlib.sha256(rebuilt).hexdigest()
        if len(rebuilt) != size or got != sha256:
            raise ValueError(
                f"rebuilt {filename} from {source} does not match TFDS's checksum: expected "
                f"{size} bytes sha256 {sha256}, got {len(rebuilt)} bytes sha256 {got}. The "
                "Debian files may be a different Fashion-MNIST release or damaged."
            )
        path = os.path.join(out_dir, filename)
        with open(path, "wb") as f:
            f.write(rebuilt)
        paths[filename] = path
    return paths


def prepare(data_dir: str, source_dir: str = DEBIAN_DIR) -> None:
    """Builds TFDS `fashion_mnist` under `data_dir` from the Debian files, without network.

    Args:
      data_dir: the TFDS data directory to build into.
      source_dir: where Debian's `dataset-fashion-mnist` files are.
    """
    import tensorflow_datasets as tfds

    with tempfile.TemporaryDirectory(prefix="fashion_mnist_manual_") as scratch:
        manual_dir = os.path.join(scratch, "manual")
        os.makedirs(manual_dir)
        rebuild_upstream_files(manual_dir, source_dir)
        builder = tfds.builder("fashion_mnist", data_dir=data_dir)
        # TFDS extracts the archives under download_dir; keep that scratch out of data_dir.
        builder.download_and_prepare(
            download_dir=os.path.join(scratch, "downloads"),
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        )
