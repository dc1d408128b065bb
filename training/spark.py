"""The one SparkSession of a process, configured from feature_store.yaml.

Feast's Spark offline store reuses the active session, so building it here first means feature
jobs, training-set builds and Feast all share one configuration: the `spark_conf` block of
feature_store.yaml (local mode by default, a cluster by changing `spark.master`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import feast  # noqa: F401  (importing Feast installs its warning filters; ours must come after)
from pyspark.sql import SparkSession

from core.settings import apply_environment_defaults, get_settings

MIN_JAVA_MAJOR = 17
# Feast labels its Spark store "alpha" on every call; say it once in the README, not per query.
warnings.filterwarnings("ignore", message=r"The spark (data source API|offline store) is an experimental")


class JavaNotFoundError(RuntimeError):
    pass


def java_major_version() -> int:
    """Return the major version of the `java` on PATH (or JAVA_HOME), raising a clear error."""
    java = shutil.which("java")
    if os.environ.get("JAVA_HOME"):
        java = os.path.join(os.environ["JAVA_HOME"], "bin", "java")
    if not java or not os.path.exists(java):
        raise JavaNotFoundError(
            f"Spark needs Java {MIN_JAVA_MAJOR}+ but no `java` was found. Install a JDK "
            f"(e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME."
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    version = out.split('"')[1] if '"' in out else "0"
    major = int(version.split(".")[1] if version.startswith("1.") else version.split(".")[0])
    return major


def check_java() -> None:
    major = java_major_version()
    if major < MIN_JAVA_MAJOR:
        raise JavaNotFoundError(
            f"Spark needs Java {MIN_JAVA_MAJOR}+, found Java {major}. Install openjdk-17 or set JAVA_HOME."
        )


def get_spark(app_name: str = "recsys") -> SparkSession:
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    check_java()
    apply_environment_defaults()
    builder = SparkSession.builder.appName(app_name)
    for key, value in get_settings().spark_conf().items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
