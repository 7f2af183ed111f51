"""``dataset: image_folder``: images in one folder per class (``root/<class>/*.png``), read with Pillow.

Pillow is optional (the ``[images]`` extra) and imported only when images are read.  ``read_image`` is the
one place a file becomes a sample, so whatever reads image files for a trained model (``predict``, through
``read_images``) applies exactly the same decoding, colour conversion and resize as training did
(``decode_settings`` describes it; it is stored with the model's preprocessing).
"""
import os

import numpy as np

from cnnframe.datasets.base import NORMALIZE, Dataset, scalar_normalization
from cnnframe.errors import DataError
from cnnframe.optional import require
from cnnframe.registry import register_dataset

#: file name endings read as images (case-insensitive); other files in a class folder are ignored
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: ``mode`` → (Pillow mode, channels)
MODES = {"grayscale": ("L", 1), "rgb": ("RGB", 3)}


def _pillow():
    return require("PIL.Image", "dataset: image_folder")


def _size(size, key="data.size"):
    """None, or (H, W) from an int or a pair of positive ints."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
        raise DataError(f"must be [height, width] in pixels (positive ints), an int, or null; got {size!r}", key=key)
    return int(size[0]), int(size[1])


def decode_settings(mode="grayscale", size=None):
    """How ``read_image`` turns a file into a raw sample, as recorded with a trained model (its preprocessing's
    ``decode``): ``{"kind": "image", "mode", "size": [H, W] or None, "channel_order", "resample", "exif_transpose",
    "dtype": "uint8"}``.  DataError for a ``mode`` or ``size`` that ``read_image`` does not take."""
    if mode not in MODES:
        raise DataError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", key="data.mode")
    size = _size(size)
    return {"kind": "image", "mode": mode, "size": None if size is None else list(size),
            "channel_order": "RGB" if mode == "rgb" else "L", "resample": "bilinear", "exif_transpose": True,
            "dtype": "uint8"}


def list_images(folder, recursive=False):
    """The image files (``EXTENSIONS``, any case) in ``folder``, and with ``recursive`` in its sub-folders, sorted by
    path; names starting with '.' (files and folders) are skipped."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.lower().endswith(EXTENSIONS):
            found.append(entry.path)
        elif recursive and entry.is_dir():
            found += list_images(entry.path, recursive=True)
    return found


def read_image(path, mode="grayscale", size=None):
    """The image file at ``path`` as a uint8 array (C, H, W): EXIF orientation applied, converted to ``mode``
    (``grayscale``: 1 channel; ``rgb``: 3 channels in R, G, B order; alpha dropped), and resized to
    ``size = (H, W)`` with bilinear filtering when given.  Raises DataError naming the file when it cannot be read."""
    Image = _pillow()
    from PIL import ImageOps

    pil_mode, channels = MODES[mode]
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert(pil_mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return a[None] if channels == 1 else np.ascontiguousarray(a.transpose(2, 0, 1))


def read_images(paths, decode, input_shape):
    """The image files ``paths`` as raw samples (N, C, H, W) uint8 for a model taking ``input_shape`` = (C, H, W)
    samples, each read by ``read_image`` as ``decode`` (``decode_settings``: mode and size) says.

    DataError naming the file when ``decode``'s mode gives another number of channels than C, or an image is not
    H×W pixels and ``decode`` records no resize."""
    c, h, w = (int(s) for s in input_shape)
    mode, size = decode["mode"], decode.get("size")
    channels = MODES[mode][1]
    if channels != c:
        raise DataError(f"{paths[0]}: the model takes {c}-channel samples, but its preprocessing reads images as "
                        f"{mode} ({channels} channel{'s' if channels > 1 else ''})", key=None)
    X = np.empty((len(paths), c, h, w), dtype=np.uint8)
    for i, path in enumerate(paths):
        a = read_image(path, mode, size)
        if a.shape[1:] != (h, w):
            how = (f"its preprocessing resizes to {size[1]}×{size[0]}" if size is not None else
                   "its preprocessing records no resize (a model trained with data.size: [H, W] resizes every image)")
            raise DataError(f"{path} is {a.shape[2]}×{a.shape[1]} pixels but the model takes {w}×{h} images and {how}",
                            key=None)
        X[i] = a
    return X


@register_dataset("image_folder")
class ImageFolder(Dataset):
    """Images from ``root/<class>/<file>``: class names are the sorted sub-folder names, labels their indices.

    mode: ``grayscale`` (1 channel) or ``rgb`` (3 channels, R, G, B).  size: ``[H, W]`` (or one int) resizes
    every image; without it all images must share one size.  normalize: ``unit`` (pixels / 255, to [0, 1]),
    ``standardize`` ((X − mean) / std over the training part) or ``none`` (0–255).
    Hidden files and folders (names starting with '.') and files of other types are skipped.
    """

    path_keys = ("root",)

    def __init__(self, root, mode="grayscale", size=None, normalize="unit"):
        if not isinstance(root, str) or not root:
            raise DataError(f"root must be the path of a folder with one sub-folder per class, got {root!r}",
                            key="data.root")
        decode_settings(mode, size)  # checks mode and size
        if normalize not in NORMALIZE:
            raise DataError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}",
                            key="data.normalize")
        self.root, self.mode, self.size, self.normalize = root, mode, _size(size), normalize
        self._files = None

    # -- the folder ------------------------------------------------------------------------------------------
    def _scan(self):
        """(class names, [(file, label), ...]) in class order, then file-name order."""
        if self._files is not None:
            return self._files
        if not os.path.exists(self.root):
            raise DataError(f"folder not found: {self.root}", key="data.root")
        if not os.path.isdir(self.root):
            raise DataError(f"is a file, expected a folder with one sub-folder per class: {self.root}",
                            key="data.root")
        classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if len(classes) < 2:
            raise DataError(f"{self.root} has {len(classes)} class folder(s); expected one sub-folder per class "
                            f"(at least 2), each holding that class's images", key="data.root")
        files = []
        for label, name in enumerate(classes):
            folder = os.path.join(self.root, name)
            found = list_images(folder)
            if not found:
                raise DataError(f"class folder {folder} holds no image files ({', '.join(EXTENSIONS)})",
                                key="data.root")
            files += [(f, label) for f in found]
        self._files = classes, files
        return self._files

    def class_names(self):
        return list(self._scan()[0])

    def preprocessing(self):
        """How a raw image file becomes a sample before ``(x - offset) * scale`` (see ``read_image``)."""
        return decode_settings(self.mode, self.size)

    # -- the Dataset interface ---------------------------------------------------------------------------------
    def describe(self):
        classes, files = self._scan()
        # Without a resize the first image sets the size; decoded, since its EXIF orientation may turn it.
        h, w = self.size if self.size is not None else read_image(files[0][0], self.mode).shape[1:]
        return (MODES[self.mode][1], h, w), len(classes)

    def load(self):
        _, files = self._scan()
        first = read_image(files[0][0], self.mode, self.size)
        X = np.empty((len(files),) + first.shape, dtype=np.uint8)
        X[0] = first
        for i, (path, _) in enumerate(files[1:], start=1):
            a = read_image(path, self.mode, self.size)
            if a.shape != first.shape:
                raise DataError(f"{path} is {a.shape[2]}×{a.shape[1]} pixels but {files[0][0]} is "
                                f"{first.shape[2]}×{first.shape[1]}; give data.size: [H, W] to resize every image "
                                f"to one size", key="data.root")
            X[i] = a
        y = np.array([label for _, label in files], dtype=np.int64)
        return X, y

    def transform(self, X_train):
        return scalar_normalization(X_train, self.normalize, unit=255.0)
