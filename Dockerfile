FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY distbatch ./distbatch
COPY workers ./workers
RUN pip install --no-cache-dir '.[serve,fast]'
ENV PYTHONUNBUFFERED=1
CMD ["distbatch", "--help"]
