# A small MLlib job for kaon's Spark test: a linear regression over a
# generated table, in several Spark jobs (so progress moves), and its
# coefficients as the step's outputs.
import json
import os

from pyspark.ml.linalg import Vectors
from pyspark.ml.regression import LinearRegression
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("kaon-mllib-test").getOrCreate()
rows = [(2.0 * (i % 7) - (i % 3) + 1.0, Vectors.dense([float(i % 7), float(i % 3)]))
        for i in range(4000)]
df = spark.createDataFrame(rows, ["label", "features"]).repartition(8).cache()
model = LinearRegression(maxIter=20, solver="l-bfgs").fit(df)
with open(os.environ["KAON_OUTPUTS_FILE"], "w") as f:
    json.dump({"coefficients": [round(c, 3) for c in model.coefficients]}, f)
spark.stop()
