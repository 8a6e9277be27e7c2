"""Global model: a Spark MLlib linear regression of engagement on the
users' features, over the global cohort. Run by `spark-submit` (kaon's
`kind: spark`), so kaon reports the application's progress. Writes the
model's coefficients as a properties file for the JVM validation and
outputs them with the training error.

Usage: global_model.py COHORT_CSV MODEL_DIR ITERATION
"""
import json
import os
import sys

from pyspark.ml.feature import VectorAssembler
from pyspark.ml.regression import LinearRegression
from pyspark.sql import SparkSession

FEATURES = ["age", "tenure_months", "watch_hours"]


def main():
    cohort, model_dir, iteration = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spark = SparkSession.builder.appName(f"global-model-{iteration}").getOrCreate()
    df = spark.read.csv(cohort, header=True, inferSchema=True)
    data = VectorAssembler(inputCols=FEATURES, outputCol="features").transform(df).cache()
    # The normal-equation solver is exact: rounds agree once the data does.
    lr = LinearRegression(featuresCol="features", labelCol="engagement",
                          maxIter=10 * iteration, solver="normal")
    model = lr.fit(data)
    rmse = model.summary.rootMeanSquaredError
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, f"global-{iteration}.properties")
    with open(path, "w") as f:
        f.write(f"intercept={float(model.intercept)!r}\n")
        for name, c in zip(FEATURES, model.coefficients):
            f.write(f"{name}={float(c)!r}\n")
        f.write(f"rmse={float(rmse)!r}\n")
    print(f"global model, round {iteration}: rmse {rmse:.4f}, written to {path}")
    with open(os.environ["KAON_OUTPUTS_FILE"], "w") as f:
        json.dump({"model": path, "rmse": round(rmse, 6),
                   "coefficients": [round(c, 6) for c in model.coefficients]}, f)
    spark.stop()


if __name__ == "__main__":
    main()
