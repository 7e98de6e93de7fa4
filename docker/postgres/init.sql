-- One PostgreSQL for both servers: a database each (the default database is `mlflow`).
CREATE DATABASE prefect;
