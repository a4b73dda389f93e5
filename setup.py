from setuptools import find_packages, setup


def _readme():
    with open("README.md", encoding="utf-8") as f:
        return f.read()


# TensorFlow's CPU-only build: `tensorflow-cpu` on Linux x86-64 (smaller, and
# what CPU machines and CI have installed), `tensorflow` elsewhere (where it is
# the CPU build already). The `tf` extra keeps `tensorflow` for GPU machines.
TF_CPU = [
    'tensorflow-cpu>=2.16; sys_platform == "linux" and platform_machine == "x86_64"',
    'tensorflow>=2.16; sys_platform != "linux" or platform_machine != "x86_64"',
]

setup(
    name="training-health",
    version="0.1.0",
    description="Per-batch gradient, activation and dead-unit statistics for Keras, "
    "with stall alerts and a TensorBoard tab that explains them.",
    long_description=_readme(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # Tested on Python 3.11 (CI's), with the oldest and the newest stack.
    python_requires=">=3.11",
    # Two source roots: logger/ holds the `training_health` package (the
    # logger, statistics, detectors, CLI), plugin/ holds the TensorBoard
    # plugin package. Every subpackage is found, so a new one ships.
    packages=find_packages("logger") + find_packages("plugin"),
    package_dir={
        "training_health": "logger/training_health",
        "tensorboard_plugin_training_health": "plugin/tensorboard_plugin_training_health",
    },
    # The tab's front end, and notes or data files kept beside any package's code.
    package_data={"": ["*.md", "*.json", "*.txt"], "tensorboard_plugin_training_health": ["static/**/*"]},
    include_package_data=True,
    # The widest ranges that work: what TensorFlow 2.16 to the newest pins
    # (2.16: tensorboard 2.16, protobuf >= 3.20.3, numpy >= 1.23.5 and < 2),
    # no upper bound, so installing training-health into an environment with
    # TensorFlow changes none of its packages. CI tests both ends
    # (.ci/oldest-stack.txt and the newest releases).
    install_requires=["tensorboard>=2.16", "protobuf>=3.20.3", "numpy>=1.23.5"],
    extras_require={
        # Where TensorFlow is installed already, no extra is needed (with
        # tensorflow-cpu installed, [tf] would add the `tensorflow` package).
        "tf": ["tensorflow>=2.16"],
        # PyTorch's CPU-only build comes from its own index:
        # pip install torch --index-url https://download.pytorch.org/whl/cpu
        "torch": ["torch>=2.3"],
        # training_health.lightning.HealthCallback (PyTorch Lightning).
        "lightning": ["torch>=2.3", "lightning>=2.0"],
        # s3fs before 0.5 is not async (no event loop); pip picks 0.4.2 when the
        # newest boto3 pins a botocore that aiobotocore does not accept yet.
        "s3": ["s3fs>=2023.1.0", "boto3"],
        "gcs": ["gcsfs"],
        # training_health.load(path) returns pandas DataFrames.
        "pandas": ["pandas"],
        "tf-cpu": TF_CPU,
        "test": TF_CPU + [
            "torch>=2.3",
            "lightning>=2.0",
            "pytest",
            "packaging",
            "werkzeug",
            "playwright",
            "moto[server]",
            "s3fs>=2023.1.0",
            "boto3",
            "fsspec",
            "tbparse",
            "pandas",
        ],
    },
    entry_points={
        "console_scripts": ["training-health = training_health.cli:main"],
        "tensorboard_plugins": [
            "training_health = tensorboard_plugin_training_health:TrainingHealthLoader",
        ],
    },
)
