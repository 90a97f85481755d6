#!/usr/bin/env python
"""Installs despike_basicsr, a BasicSR plugin (see README.md for the set-up commands).

torch and torchvision are pinned as a pair that loads together: see ``requirements/torch.txt`` and docs/install.md for
why a plain ``torch`` requirement is not enough on some machines. basicsr 1.4.2 is a source distribution whose build
imports torch, so it must be installed with ``--no-build-isolation`` after torch (scripts/install.sh does that).
"""
from setuptools import find_packages, setup


def read_requirements(path: str) -> list:
    with open(path, encoding='utf-8') as f:
        return [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]


def read_version() -> str:
    scope = {}
    with open('despike_basicsr/version.py', encoding='utf-8') as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='despike_basicsr',
    version=read_version(),
    description='DeSpike: sharp images from defocused spike-camera streams, as a BasicSR plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=('despike_basicsr', 'despike_basicsr.*')),
    package_data={'despike_basicsr': ['weights/*.pth']},  # the shipped pretrained model (docs/pretrained.md)
    python_requires='>=3.9',
    install_requires=read_requirements('requirements/torch.txt') + read_requirements('requirements/base.txt'),
    extras_require={
        'test': read_requirements('requirements/test.txt'),
        'onnx': read_requirements('requirements/onnx.txt'),  # despike-export and its onnxruntime check
    },
    entry_points={
        'console_scripts': [
            'despike-simulate=despike_basicsr.spike.cli:simulate_main',
            'despike-reconstruct=despike_basicsr.spike.cli:reconstruct_main',
            'despike-calibrate-fpn=despike_basicsr.spike.cli:calibrate_fpn_main',
            'despike-infer=despike_basicsr.inference.infer:main',
            'despike-train=despike_basicsr.train:main',
            'despike-test=despike_basicsr.test:main',
            'despike-export=despike_basicsr.inference.export:main',
        ]
    },
    classifiers=['Programming Language :: Python :: 3', 'License :: OSI Approved :: Apache Software License'],
    license='Apache License 2.0',
)
