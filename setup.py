"""tf_maml: Model-Agnostic Meta-Learning for Keras 3 on TensorFlow."""

from setuptools import find_packages, setup

setup(
    name="tf_maml",
    version="0.1.0",
    description="MAML (Finn et al., 2017) over any Keras 3 model: second-order meta-gradients, "
    "Keras fit API, Omniglot, meta-RL and TF Serving export.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tf_maml", "tf_maml.*"]),
    python_requires=">=3.10,<3.13",
    # Ranges are the versions this package was tested with (see README, "Tested versions").
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "tensorflow-datasets>=4.9.10,<4.10",
        "gymnasium[mujoco]>=1.4,<1.5",
        "mujoco>=4.0,<4.1",
        "numpy>=2.0,<2.5",
        "tensorboard>=2.21,<2.22",
        "matplotlib>=3.9,<3.12",
        "pillow>=10,<14",
        "tqdm>=4.66,<5",
        "importlib_resources>=6,<8",  # tensorflow-datasets needs it to download and prepare
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4"],
        # PyTorch reference for the benchmarks only; never needed by the package.
        "bench-torch": ["torch>=2.9,<2.15"],
    },
)
