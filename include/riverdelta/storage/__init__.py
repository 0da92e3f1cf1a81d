"""Where things live: storage roots (file, s3a, hdfs), the table layout and atomic control files."""
