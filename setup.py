"""Install nasseg; ``spaces/`` and ``searches/`` ship inside it as nasseg.spaces / nasseg.searches."""
from setuptools import find_packages, setup

core = find_packages(include=["nasseg", "nasseg.*"])
spaces = ["nasseg.spaces" + p[len("spaces"):] for p in find_packages(include=["spaces", "spaces.*"])]
searches = ["nasseg.searches" + p[len("searches"):]
            for p in find_packages(include=["searches", "searches.*"])]

setup(
    name="nasseg",
    version="0.1.0",
    description="Neural architecture search for medical image segmentation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=core + spaces + searches,
    package_dir={"nasseg": "nasseg", "nasseg.spaces": "spaces", "nasseg.searches": "searches"},
    install_requires=[
        "torch>=2.1",
        "nni==3.0",
        "pytorch-lightning",
        "optuna>=3.0",
        "numpy",
        "nibabel",
        "h5py",
        "tensorboard",
        "click>=8.0",
        "tqdm",
        "scipy",
        "pillow",
        "matplotlib",
        "tifffile",
    ],
    extras_require={"onnx": ["onnx", "onnxruntime"],
                    "postgres": ["psycopg2-binary"],
                    "test": ["pytest>=7", "onnx", "onnxruntime", "psycopg2-binary"]},
    entry_points={"console_scripts": ["nasseg=nasseg.cli:main"]},
)
