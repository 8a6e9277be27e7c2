# Per-region model: a generalised linear model of engagement on the users'
# features for one region (kaon's `kind: r` runs it with Rscript). Writes
# the coefficients as a properties file for the JVM validation and outputs
# them (base R only: the JSON is written by hand).
#
# Usage: region_model.R REGION REGION_DIR MODEL_DIR ITERATION
args <- commandArgs(trailingOnly = TRUE)
region <- args[1]
region_dir <- args[2]
model_dir <- args[3]
iteration <- as.integer(args[4])

data <- read.csv(file.path(region_dir, paste0(region, ".csv")))
model <- glm(engagement ~ age + tenure_months + watch_hours, data = data,
             family = gaussian())
coefs <- coef(model)
dir.create(model_dir, showWarnings = FALSE, recursive = TRUE)
path <- file.path(model_dir, sprintf("region-%s-%d.properties", region, iteration))
names <- c("intercept", "age", "tenure_months", "watch_hours")
writeLines(sprintf("%s=%.12g", names, coefs), path)
cat(sprintf("region %s, round %d: AIC %.2f, written to %s\n", region, iteration,
            AIC(model), path))
json <- sprintf('{"region": "%s", "model": "%s", "aic": %.6f, "coefficients": [%s]}',
                region, path, AIC(model), paste(sprintf("%.6f", coefs), collapse = ", "))
writeLines(json, Sys.getenv("KAON_OUTPUTS_FILE"))
