-- now(): the store clock, nothing else (the header every reply carries). A read.
return ok()
