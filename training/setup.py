"""mspr_training: train, evaluate and export mspr_ros weights bundles."""
from setuptools import find_packages, setup

setup(
    name='mspr_training',
    version='0.1.0',
    packages=find_packages(include=['mspr_training', 'mspr_training.*']),
    package_data={'mspr_training': ['configs/*.yaml']},
    python_requires='>=3.10',
    install_requires=['mspr_ros'],
    extras_require={'onnx': ['onnx==1.23.2', 'onnxruntime==1.32.0']},  # mspr-export --onnx
    license='Apache-2.0',
    description='Training, evaluation, export and bag evaluation for mspr_ros.',
    entry_points={
        'console_scripts': [
            'mspr-synth = mspr_training.synth.cli:main',
            'mspr-train = mspr_training.train:main',
            'mspr-evaluate = mspr_training.evaluate:main',
            'mspr-export = mspr_training.export:main',
            'mspr-bag-eval = mspr_training.bags.cli:main',
            'mspr-bag-from-dataset = mspr_training.bags.from_dataset:main',
            'mspr-align = mspr_training.align:main',
        ],
    },
)
