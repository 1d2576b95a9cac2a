"""Per-rank training code (DeepSpeed + HF Trainer). Never imports Spark: the driver
(``dolly_spark.launch``) stages gold as Parquet and starts ``dolly_spark.train.worker``."""
