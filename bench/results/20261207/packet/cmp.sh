#!/bin/sh
# Runs the before and after bench binaries alternately N times; prints all lines tagged.
# usage: cmp.sh N before after [dir]
N=$1; B=$2; A=$3; D=${4:-.}
cd "$D"
i=0
while [ $i -lt $N ]; do
  chrt -f 50 taskset -c 1 "$B" --bench | grep ns/packet | sed 's/^/before | /'
  chrt -f 50 taskset -c 1 "$A" --bench | grep ns/packet | sed 's/^/after  | /'
  i=$((i+1))
done
