from setuptools import find_packages, setup

setup(
    name="dolly_spark",
    version="0.1.0",
    description="Databricks Dolly 2.0, reproduced the Databricks-native way",
    packages=find_packages(include=["dolly_spark", "dolly_spark.*"]),
    package_data={"dolly_spark": ["configs/*.yaml", "configs/*.json"]},
    python_requires=">=3.11",
    # Databricks runtimes bring their own pyspark, pandas and pyarrow: the wheel must not replace
    # them, so the embedded engine and its exact pins live in the `local` extra.
    install_requires=[
        "pyyaml>=6",
        "tokenizers>=0.20",
        "rensa>=0.5,<0.6",  # dedup's MinHash signatures (prep/minhash.py); no runtime ships it
    ],
    extras_require={
        "local": ["pyspark[connect]==4.2.0", "pysail==0.7.2", "deltalake==1.6.6", "pandas==2.3.3", "pyarrow==25.0.1"],
        "train": [
            "torch==2.13.0",
            "transformers==5.24.0",
            "accelerate==1.15.0",
            "datasets==5.2.0",
            "deepspeed==0.19.8",
            "safetensors==0.8.0",
            "mlflow==3.17.2",
            "peft==0.21.2",  # --method lora|qlora
            "bitsandbytes==0.50.2",  # --method qlora
        ],
        # prepare's PII and secrets scan (prep/pii.py): pattern recognizers only, no spaCy model.
        "governance": ["presidio-analyzer==2.2.366", "detect-secrets==1.5.0"],
        "dev": ["pytest==9.2.0", "ruff==0.17.6", "hypothesis==6.170.17", "jsonschema==4.26.0", "matplotlib==3.11.2"],
    },
    entry_points={
        "console_scripts": [
            "dolly-spark=dolly_spark.commands.cli:main",
            "dolly-prepare=dolly_spark.commands.prepare:main",
            "dolly-report=dolly_spark.commands.report:main",
            "dolly-train=dolly_spark.commands.train:main",
            "dolly-register=dolly_spark.commands.register:main",
            "dolly-score=dolly_spark.commands.score:main",
            "dolly-evaluate=dolly_spark.commands.evaluate:main",
            "dolly-run=dolly_spark.commands.run:main",
            "dolly-sql=dolly_spark.commands.sql:main",
            "dolly-engine=dolly_spark.commands.engine:main",
            "dolly-serve=dolly_spark.commands.serve:main",
            "dolly-endpoint=dolly_spark.commands.endpoint:main",
        ]
    },
)
