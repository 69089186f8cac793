# Merges the SimpleCov result sets that `gorgon start` brought back (`job.artifacts`, under
# artifacts/HOST/) into one report in coverage/, with SimpleCov's own collate. Run it in the
# project once the run is over (docs/databases.md, "Artifacts and coverage"):
#
#   ruby simplecov_collate.rb ['artifacts/*/coverage/*/.resultset.json']
#
# A result set names each file by its path in the workspace of the host that ran it: each
# is named again by the longest end of that path that is a file of this project, so that
# every host's lines of a file count for the same file. SimpleCov's report settings (filters,
# groups, a profile) go in the block of `SimpleCov.collate`, as in SimpleCov's README.
require 'json'
require 'simplecov'
require 'tmpdir'

# This project's file that `path` names on another host: the longest end of it that names a
# file relative to here (never `path` itself, which may exist here and be another tree);
# `path` itself when none does.
def in_this_project(path)
  parts = path.split('/')
  found = (1...parts.size).map { |i| parts[i..].join('/') }.find { |rest| File.file?(rest) }
  found ? File.expand_path(found) : path
end

sets = Dir[ARGV.fetch(0, 'artifacts/*/coverage/*/.resultset.json')].sort
abort 'simplecov_collate.rb: no result set came back; see job.artifacts.paths' if sets.empty?
Dir.mktmpdir do |dir|
  moved = sets.each_with_index.map do |set, i|
    results = JSON.parse(File.read(set)).transform_values do |result|
      result.merge('coverage' => result['coverage'].transform_keys { |file| in_this_project(file) })
    end
    File.join(dir, "#{i}.json").tap { |path| File.write(path, JSON.generate(results)) }
  end
  SimpleCov.collate(moved)
end
