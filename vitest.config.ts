import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Namespace tests build and tear down whole sites; give them room, and run files one at a
    // time on CI's two cores so that timing-sensitive commit-confirm windows are not starved.
    testTimeout: 60000,
    hookTimeout: 60000,
    fileParallelism: false,
  },
});
