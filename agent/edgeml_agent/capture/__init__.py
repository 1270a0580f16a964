"""Data capture on the device: the policy's decision (request threads), the on-disk spool (the writer
thread) and the store-and-forward upload to the fleet (the uploader thread). See :mod:`.component`."""
