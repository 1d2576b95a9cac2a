"""dolly_spark: Databricks Dolly 2.0, reproduced the Databricks-native way."""

__version__ = "0.1.0"
