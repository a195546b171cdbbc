"""Installs tf_mha; the version is read from tf_mha/__init__.py."""

import pathlib
import re

import setuptools

_HERE = pathlib.Path(__file__).parent
_VERSION = re.search(r'^__version__ = "([^"]+)"',
                     (_HERE / "tf_mha" / "__init__.py").read_text(), re.M).group(1)

# The documentation site (mkdocs.yml): `mkdocs serve` to read it locally; the
# tests build it with `mkdocs build --strict`.
_DOCS = [
    "mkdocs>=1.6,<2",
    "mkdocs-material>=9.5,<10",
    "mkdocstrings[python]>=0.26",
]

setuptools.setup(
    name="tf_mha",
    version=_VERSION,
    description="Multi-head attention for TensorFlow (tf_keras): drop-in, "
    "exact blockwise attention in linear memory, export to Serving and TFLite.",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["tf_mha", "tf_mha.*"]),
    package_data={"tf_mha": ["demo/data/*"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",
        "tensorflow-text==2.21.1",  # 2.21.0 fails to import (tensorflow/text#1541)
        "tensorflow-serving-api==2.21.0",
        "ai-edge-litert>=2.0",
        # LiteRT-LM: the runtime, the .litertlm builder and the `litert-lm`
        # command, and the tokenizers a .litertlm file holds.
        "litert-lm-api==0.18.1",
        "litert-lm-builder==0.18.1",
        "litert-lm==0.18.1",
        "sentencepiece>=0.2",
        # int4 weights for .litertlm files (pins ai-edge-litert 2.3.0).
        "ai-edge-quantizer==0.10.0",
        "tokenizers>=0.20",
        "absl-py>=2.1",
        "numpy>=1.26",
    ],
    extras_require={
        "docs": _DOCS,
        "bench": ["matplotlib>=3.8", "keras>=3.10,<4", "keras-hub>=0.32,<0.33"],
        # tf_mha.keras3: the Keras versions it is tested with (checked at
        # import, tf_mha/keras3/__init__.py SUPPORTED_KERAS).
        "keras3": ["keras>=3.10,<4"],
        # tf_mha.models.keras_hub: KerasHub presets (tf_mha_export
        # --keras_hub_preset), with the version it is tested against.
        "keras_hub": ["keras>=3.10,<4", "keras-hub>=0.32,<0.33"],
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "h5py>=3.10",
            "matplotlib>=3.8",
            "portpicker>=1.6",
            # What Model Garden's tests need besides tf-models-official, which
            # the test command installs with --no-deps (it pins TF 2.20).
            "gin-config>=0.5",
            "scipy>=1.10",
            "keras>=3.10,<4",
            # tests/test_docs.py builds the site.
            *_DOCS,
            # KerasHub's layers are the reference of the rotary tests.
            "keras-hub>=0.32,<0.33",
        ],
    },
    entry_points={
        "console_scripts": [
            "tf_mha_export=tf_mha.cli.export_saved_model:run",
            "tf_mha_convert_tflite=tf_mha.cli.convert_tflite:run",
            "tf_mha_convert_litertlm=tf_mha.cli.convert_litertlm:run",
            "tf_mha_train=tf_mha.cli.train:run",
            "tf_mha_benchmark=tf_mha.cli.benchmark:run",
            "tf_mha_generate=tf_mha.cli.generate:run",
        ],
    },
)
