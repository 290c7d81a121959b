-- Call quality (see 0016): one row per visit and participant role, counts per bucket, updated per sample.

-- name: add_quality_sample
-- $3 and $4 add one to a bucket each (one-hot arrays, all zeros when the page measured nothing). A row at the
-- cap of $5 samples counts no more: the table stays the same size however long the visit runs.
INSERT INTO call_quality (visit_id, role, samples, rtt_counts, loss_counts)
VALUES ($1, $2, 1, $3::integer[], $4::integer[])
ON CONFLICT (visit_id, role) DO UPDATE SET
    samples = call_quality.samples + 1,
    rtt_counts = ARRAY(SELECT x.a + x.b FROM unnest(call_quality.rtt_counts, EXCLUDED.rtt_counts)
                       WITH ORDINALITY AS x(a, b, i) ORDER BY x.i),
    loss_counts = ARRAY(SELECT x.a + x.b FROM unnest(call_quality.loss_counts, EXCLUDED.loss_counts)
                        WITH ORDINALITY AS x(a, b, i) ORDER BY x.i),
    updated_at = now()
WHERE call_quality.samples < $5;

-- name: visit_quality
SELECT role, samples, rtt_counts, loss_counts FROM call_quality WHERE visit_id = $1 ORDER BY role;
