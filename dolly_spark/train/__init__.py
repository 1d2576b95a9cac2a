"""Per-rank training code (DeepSpeed + HF Trainer). Never imports Spark: the driver
(``dolly_spark.launch.launcher``) stages gold as Parquet and starts ``dolly_spark.train.worker``."""
