-- One PostgreSQL for both servers and the build scores: a database each (the default database
-- is `mlflow`).
CREATE DATABASE prefect;
CREATE DATABASE pbf_results;
