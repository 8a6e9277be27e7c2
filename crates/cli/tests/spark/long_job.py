# A Spark job that runs for minutes unless it is killed: kaon's test
# cancels it and checks that no Spark JVM is left behind.
import time

from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("kaon-long-test").getOrCreate()
def slow(x):
    time.sleep(1.0)
    return x
spark.sparkContext.parallelize(range(600), 8).map(slow).count()
spark.stop()
