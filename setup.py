"""verl-prpo: process-reward RL (PRPO, PRL, SPRO) as a plugin for verl 0.9.1."""

from setuptools import find_packages, setup

setup(
    name="verl-prpo",
    version="0.1.0",
    description="Process-reward advantage estimators, a PRM worker group and a CPU mode for verl",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["verl_prpo", "verl_prpo.*"]),
    package_data={"verl_prpo": ["conf/*.yaml"]},
    install_requires=[
        "verl[verl-core]==0.9.1",
        "math-verify>=0.7",
    ],
    extras_require={
        # GPU users: verl's own pinned extras (vllm==0.24.0, torch==2.11.0, transformers==5.9.0; FSDP with
        # flash-attn==2.8.3 built for CUDA 13.0 + torch 2.11), so pip resolves what verl 0.9.1 is tested with.
        # Not installable on CPU-only machines.
        "gpu": ["verl[vllm,fsdp]==0.9.1"],
        "test": ["pytest>=8", "hypothesis>=6", "matplotlib>=3.7"],
        "plots": ["matplotlib>=3.7"],
    },
    entry_points={
        # `import verl` imports every `verl.plugins` entry point in every process (driver, TaskRunner, workers).
        "verl.plugins": ["prpo = verl_prpo"],
        "console_scripts": [
            "verl-prpo-eval = verl_prpo.evaluation.cli:main",
            "verl-prpo-prepare-data = verl_prpo.data.cli:main",
        ],
    },
)
