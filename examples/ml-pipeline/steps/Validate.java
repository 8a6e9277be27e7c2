// Validation on the JVM: compares this round's models (the Spark global
// model and the R per-region models) with the previous round's and says
// whether they are stable (no coefficient moved more than the tolerance).
// kaon's `kind: jvm` runs it with `java Validate.java ...` (Java 11+ runs a
// single source file; no build step). Outputs `stable`, the largest
// `drift`, and the model as JSON text for publishing.
//
// Usage: java Validate.java MODEL_DIR ITERATION TOLERANCE
// (the regions are the region-REGION-ITERATION.properties files found).

import java.io.IOException;
import java.io.Reader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Properties;
import java.util.TreeMap;

public class Validate {
    static Properties load(Path p) throws IOException {
        Properties props = new Properties();
        try (Reader r = Files.newBufferedReader(p)) {
            props.load(r);
        }
        return props;
    }

    /** The largest change of a coefficient between two models. */
    static double drift(Properties now, Properties before) {
        double max = 0;
        for (String k : new String[] {"intercept", "age", "tenure_months", "watch_hours"}) {
            double a = Double.parseDouble(now.getProperty(k));
            double b = Double.parseDouble(before.getProperty(k));
            max = Math.max(max, Math.abs(a - b));
        }
        return max;
    }

    static String json(Properties p) {
        StringBuilder s = new StringBuilder("{");
        for (String k : new TreeMap<>(p).keySet().toArray(new String[0])) {
            if (s.length() > 1) s.append(", ");
            s.append('"').append(k).append("\": ").append(Double.parseDouble(p.getProperty(k)));
        }
        return s.append('}').toString();
    }

    public static void main(String[] args) throws IOException {
        Path dir = Path.of(args[0]);
        int round = Integer.parseInt(args[1]);
        double tolerance = Double.parseDouble(args[2]);
        String suffix = "-" + round + ".properties";
        String[] regions;
        try (var files = Files.list(dir)) {
            regions = files.map(f -> f.getFileName().toString())
                    .filter(n -> n.startsWith("region-") && n.endsWith(suffix))
                    .map(n -> n.substring("region-".length(), n.length() - suffix.length()))
                    .sorted()
                    .toArray(String[]::new);
        }
        if (regions.length == 0) {
            throw new IllegalStateException("no region models for round " + round + " in " + dir);
        }
        Properties global = load(dir.resolve("global-" + round + ".properties"));
        StringBuilder model = new StringBuilder("{\"round\": " + round + ", \"global\": " + json(global) + ", \"regions\": {");
        double worst = round > 1 ? drift(global, load(dir.resolve("global-" + (round - 1) + ".properties"))) : Double.POSITIVE_INFINITY;
        for (int i = 0; i < regions.length; i++) {
            String r = regions[i];
            Properties now = load(dir.resolve("region-" + r + "-" + round + ".properties"));
            if (round > 1) {
                worst = Math.max(worst, drift(now, load(dir.resolve("region-" + r + "-" + (round - 1) + ".properties"))));
            }
            model.append(i > 0 ? ", " : "").append('"').append(r).append("\": ").append(json(now));
        }
        model.append("}}");
        boolean stable = worst <= tolerance;
        System.out.printf("round %d: largest coefficient drift %s, tolerance %s: %s%n",
                round, round > 1 ? String.valueOf(worst) : "n/a (first round)", tolerance, stable ? "stable" : "not stable");
        String escaped = model.toString().replace("\\", "\\\\").replace("\"", "\\\"");
        String out = "{\"stable\": " + stable + ", \"drift\": " + (round > 1 ? String.valueOf(worst) : "null")
                + ", \"model_json\": \"" + escaped + "\"}";
        Files.writeString(Path.of(System.getenv("KAON_OUTPUTS_FILE")), out);
    }
}
