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
        # GPU users: verl's own pinned extras (vllm==0.24.0, torch==2.11.0, transformers==5.9.0; FSDP), so pip
        # resolves what verl 0.9.1 is tested with. verl's `fsdp` extra pins flash-attn==2.8.3, which the package
        # registry has only as a source distribution (no Linux x86-64 wheel): pip compiles it, which needs
        # torch importable at build time and the CUDA 13.0 compiler (nvcc). Working order (README, Install):
        #   pip install torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0   (the CUDA 13.0 build)
        #   pip install ninja packaging psutil
        #   MAX_JOBS=8 pip install flash-attn==2.8.3 --no-build-isolation     (compiles; tens of minutes)
        #   pip install -e ".[gpu]"
        # Not installable on CPU-only machines.
        "gpu": ["verl[vllm,fsdp]==0.9.1"],
        # The same stack without flash-attn (nothing to compile): verl's `fsdp` extra minus its flash-attn extra.
        # Train with actor_rollout_ref.model.use_remove_padding=false and
        # +actor_rollout_ref.model.override_config.attn_implementation=sdpa (the PRM uses SDPA anyway; vLLM brings
        # its own attention kernels). tests/trainer/test_gpu_setups.py checks the list against verl's metadata.
        "gpu-sdpa": ["verl[vllm,cupy-cu130]==0.9.1", "liger-kernel>=0.8.2", "trl==0.27.0",
                     "flash-linear-attention==0.5.2"],
        "test": ["pytest>=8", "pytest-xdist>=3.6", "hypothesis>=6", "matplotlib>=3.7"],
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
