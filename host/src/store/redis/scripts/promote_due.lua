-- promote_due(limit): requeued tasks whose backoff is over become claimable; answers them.
return ok(promote_due(tonumber(arg(1))))
